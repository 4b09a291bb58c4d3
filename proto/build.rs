//! Compiles the .proto files with protox (pure Rust: no protoc needed on
//! the machine) and generates tonic/prost code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["outpost/agent/v1/agent.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .type_attribute(".outpost.agent.v1", "#[derive(serde::Serialize)]")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

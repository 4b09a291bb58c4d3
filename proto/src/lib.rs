//! Generated protobuf types and gRPC stubs for Outpost's contracts.

/// `outpost.agent.v1`: the agent's local management API.
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("outpost.agent.v1");
    }
}

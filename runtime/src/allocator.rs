//! The agent's memory allocator: mimalloc, without transparent huge pages.
//!
//! The data path allocates for every message: the envelope, the topic and
//! payload lifted from each publish, the output lists. glibc's `malloc` and
//! `free` were about a fifth of in-agent delivery in `perf`; mimalloc's
//! per-thread free lists took two WASM hops from 0.92 to 1.2 million
//! messages a second. By default mimalloc lets the kernel back its arenas
//! with transparent huge pages, so that one touched byte makes 2 MiB
//! resident: the idle agent held 43 MiB instead of 10.6. Without them it
//! holds 11.9 MiB. (Committing arenas on demand instead also kept it small,
//! but cost 150 more `mprotect` calls and about 0.7 ms at start.)
//!
//! A binary that runs the agent's data path (the `outpost` binary, the bench)
//! installs it with [`install_allocator!`](crate::install_allocator).

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_allow_thp` in `mimalloc.h` of the mimalloc 3 that
/// `libmimalloc-sys` 0.1.49 builds (pinned in `runtime/Cargo.toml`): the
/// Rust binding does not name it, and a newer mimalloc may number it
/// differently.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Sets mimalloc's options. [`install_allocator!`](crate::install_allocator)
/// runs it before `main`: mimalloc reads its options when the process starts
/// and reserves its first arena at the first allocation, both before `main`.
pub extern "C" fn configure() {
    // SAFETY: `mi_option_set` stores one value in mimalloc's option table and
    // marks it set, so that mimalloc's start-up does not read it from the
    // environment; it takes no pointer and needs no initialised allocator.
    unsafe { libmimalloc_sys::mi_option_set(ALLOW_THP, 0) };
}

/// Makes mimalloc the binary's global allocator, configured before anything
/// allocates: an `.init_array` entry with a priority runs before the
/// constructors without one, mimalloc's among them.
#[macro_export]
macro_rules! install_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::Allocator = $crate::allocator::Allocator;

        #[used]
        #[link_section = ".init_array.00101"]
        static CONFIGURE_ALLOCATOR: extern "C" fn() = $crate::allocator::configure;
    };
}

//! The agent's memory allocator: mimalloc, with arenas committed on demand.
//!
//! The data path allocates for every message: the envelope, the topic and
//! payload lifted from each publish, the output lists. glibc's `malloc` and
//! `free` were about a fifth of in-agent delivery in `perf`; mimalloc's
//! per-thread free lists took two WASM hops from 0.92 to 1.22 million
//! messages a second. Its default on Linux commits whole arenas eagerly, and
//! then keeps what start-up freed resident (idle agent 10.6 -> 43 MiB); with
//! eager commit off it gives freed pages back after its purge delay, as glibc
//! trims: 12.2 MiB.
//!
//! A binary that runs the agent's data path (the `outpost` binary, the bench)
//! installs it with [`install_allocator!`](crate::install_allocator).

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mimalloc.h` (the Rust
/// binding names only the options both major versions share; the enum's
/// values are part of mimalloc's C ABI and keep their place when deprecated).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc's options. [`install_allocator!`](crate::install_allocator)
/// runs it before `main`: mimalloc reads its options when the process starts
/// and reserves its first arena at the first allocation, both before `main`.
pub extern "C" fn configure() {
    // SAFETY: `mi_option_set` stores one value in mimalloc's option table and
    // marks it set, so that mimalloc's start-up does not read it from the
    // environment; it takes no pointer and needs no initialised allocator.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
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

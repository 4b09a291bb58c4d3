//! Outpost's tools for people, apart from the agent that runs on the
//! gateway:
//!
//! - [`sim`]: `outpost-sim`, recorded field data replayed onto the bus.
//! - [`replay`]: `outpostctl run`, one service in the real host fed from a file.
//! - [`render`]: how outputs are printed for people.
//!
//! The binaries `outpostctl` and `outpost-sim` live here too.

pub mod render;
pub mod replay;
pub mod sim;

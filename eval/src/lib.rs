//! Offline scoring for Outpost services, ported exactly from the official code of the
//! benchmarks they are judged on.
//!
//! - [`inp`]: EPANET `.inp` reader (topology sections), typed errors with file and line.
//! - [`network`]: pipe graph, Dijkstra distances, the BattLeDIM pipe-to-pipe distance.
//! - [`battledim`]: the BattLeDIM 2020 leak detection and localisation scorer
//!   (`Scoring_Algorithm.m`, `scoring_function.m`).
//! - [`leakdb`]: LeakDB's detection scores (`scoring_algorithm.m`): F1, MCC, TPR, TNR, SED.
//!
//! ```no_run
//! use outpost_eval::battledim::Battledim;
//! let b = Battledim::load(std::path::Path::new("tests/data/battledim"))?;
//! let score = b.score_file(std::path::Path::new("my_team.txt"))?;
//! println!("{}", score.render_report("my_team", &b.leaks));
//! # Ok::<(), outpost_eval::battledim::BattledimError>(())
//! ```

pub mod battledim;
pub mod inp;
pub mod leakdb;
pub mod network;

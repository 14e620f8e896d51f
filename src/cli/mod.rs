//! The command line's rooms: one module per subcommand (its clap arguments beside its `run`), and
//! the pieces they share, one home each.
//!
//! Arrows point one way: a subcommand module uses the shared modules and never another
//! subcommand; a shared module never uses a subcommand. The clap argument structs carry `//`
//! comments, not `///`: clap would take a struct's doc comment for the subcommand's about text
//! (the about comes from the `Command` variant's doc comment in `main.rs`).

// Shared.
pub mod failure;
pub mod output;
pub mod parse;
pub mod progress;
pub mod run;

// One per subcommand.
pub mod check;
pub mod codegen;
pub mod count;
pub mod expand;
pub mod import;
pub mod paths;
pub mod plan;
pub mod plot;
pub mod report;
pub mod scores;
pub mod stats;

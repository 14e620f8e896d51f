//! The command line's shared pieces, one home each.
//!
//! A shared module never uses the command bodies in `main.rs`. The clap argument structs carry
//! `//` comments, not `///`: clap would take a struct's doc comment for a subcommand's about text.

pub mod failure;
pub mod output;
pub mod parse;
pub mod progress;
pub mod run;

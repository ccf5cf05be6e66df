//! previewd: turns every git branch of a bare mirror into a live, isolated HTTPS preview, and
//! removes it when the branch is merged or deleted.
//!
//! The flow is level-triggered: a hook poke, a ref change, a finished deploy or a periodic
//! resync all run the same pass of [`reconcile`] — read git ([`mirror`]), read Docker
//! ([`docker`]), plan, apply — and publish a new route table to the embedded proxy.

mod check_spec;
pub mod cli;
pub mod config;
pub mod control;
mod daemon;
pub mod docker;
mod dockerignore;
pub mod engine;
mod events;
pub mod health;
mod hook;
pub mod merged;
pub mod mirror;
pub mod model;
pub mod reconcile;
mod route_admin;
mod sd_notify;
pub mod slug;
pub mod spec;
mod standalone;
mod state;
pub mod subnet_pool;
#[cfg(test)]
mod test_git;
mod watch;

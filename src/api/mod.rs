//! The HTTP API, identical on TCP and the Unix socket: PSLE- and WCP-compatible routes plus
//! sidekey's native routes. `routes` is pure (request head → response), `listen` owns sockets.

pub mod allow;
pub mod auth;
pub mod dto;
pub mod listen;
pub mod query;
pub mod routes;

pub use auth::Auth;
pub use listen::{Listeners, serve};
pub use routes::Api;

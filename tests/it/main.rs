//! The one integration-test binary: the real `sidekey` binary and the real server over real
//! sockets, against moto (AWS API) or the local file source, and in-process with the fake.

mod budget;
mod cli;
mod e2e_moto;
mod examples;
mod exec;
mod faults;
mod hostile;
mod inprocess;
mod lambda;
mod reach;
mod server;
mod support;
mod templates;

//! The HTTP API end to end, against a server started in this process and real PostgreSQL,
//! MariaDB and Redis servers on loopback.

mod common;
mod connections;
mod console;
mod files;
mod flows;
mod guard;
mod queries;
mod schema;
mod secrets;
mod security;
mod templates;
mod torture;
mod transfers;

//! Task flows: DAGs of SQL, transfer, export and check nodes with variables such as `${bizdate}`,
//! cron schedules, retries, timeouts, backfills and reruns. Flows, versions, runs, task
//! instances, leases and logs live in the metadata store, so the workers of any node can take a
//! run's tasks (`exec`), and the scheduler fires each time once (`sched`).

pub mod dump;
pub mod exec;
pub mod external;
pub mod kinds;
pub mod model;
pub mod notify;
pub mod sched;
pub mod templates;
pub mod vars;

pub use exec::{Executor, RunRequest};
pub use kinds::Resources;
pub use model::FlowSpec;

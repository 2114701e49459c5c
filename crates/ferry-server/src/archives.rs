//! Archives: registered sets of files queried with SQL under the instance name `archive`.

use ferry_core::{Error, Result};
use ferry_query::ArchiveTable;

use crate::SharedState;

/// The registered archives, in name order.
pub async fn list(state: &SharedState) -> Result<Vec<ArchiveTable>> {
    state
        .meta
        .list_archives()
        .await?
        .into_iter()
        .map(|(name, definition)| {
            serde_json::from_str(&definition).map_err(|e| {
                Error::Internal(format!(
                    "stored definition of archive \"{name}\" is unreadable: {e}"
                ))
            })
        })
        .collect()
}

pub async fn add(state: &SharedState, table: ArchiveTable) -> Result<ArchiveTable> {
    table.validate()?;
    let definition = serde_json::to_string(&table).map_err(|e| Error::Internal(e.to_string()))?;
    state.meta.insert_archive(&table.name, &definition).await?;
    // The archive engine is rebuilt with the new table on its next use.
    state.instances.forget(ferry_query::ARCHIVE_INSTANCE);
    tracing::info!(archive = %table.name, url = %table.url, "archive registered");
    Ok(table)
}

pub async fn remove(state: &SharedState, name: &str) -> Result<()> {
    if !state.meta.delete_archive(name).await? {
        return Err(Error::NotFound(format!(
            "no archive named \"{name}\"; list them with `ferry archive list`"
        )));
    }
    state.instances.forget(ferry_query::ARCHIVE_INSTANCE);
    Ok(())
}

//! Runs refinery's embedded migrations over the sqlx pool, so that the build
//! links one SQLite driver. refinery has no sqlx driver; it exposes async
//! traits that any connection type can implement, which this module does.

use refinery_core::error::Kind;
use refinery_core::traits::r#async::{AsyncQuery, AsyncTransaction};
use refinery_core::{AsyncMigrate, Migration};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies every migration the database lacks. Refuses a database whose
/// history has a migration this binary does not know (a newer schema) or
/// whose applied migrations differ from the embedded ones.
pub async fn run(pool: &SqlitePool) -> Result<Vec<String>, MigrationError> {
    let mut connection = MigrationConnection(pool.acquire().await?);
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut connection)
        .await
        .map_err(explain)?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// Why the migrations could not be applied; a history mismatch says what it
/// means for the operator.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the database has migration {0}, which this binary does not know: it was \
         written by a newer orchestrator; refusing to start (run the newer version)"
    )]
    NewerSchema(String),
    #[error(
        "the database's applied migration {applied} differs from this binary's {embedded}; \
         refusing to start rather than guess at the schema"
    )]
    Divergent { applied: String, embedded: String },
    #[error(transparent)]
    Refinery(refinery_core::Error),
    #[error(transparent)]
    Connection(#[from] sqlx::Error),
}

fn explain(error: refinery_core::Error) -> MigrationError {
    match error.kind() {
        Kind::MissingVersion(migration) => MigrationError::NewerSchema(migration.to_string()),
        Kind::DivergentVersion(applied, embedded) => MigrationError::Divergent {
            applied: applied.to_string(),
            embedded: embedded.to_string(),
        },
        _ => MigrationError::Refinery(error),
    }
}

struct MigrationConnection(PoolConnection<Sqlite>);

impl AsyncTransaction for MigrationConnection {
    type Error = sqlx::Error;

    /// refinery hands over each migration's SQL together with the insert into
    /// its history table; both must commit or neither.
    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let mut transaction = self.0.begin_with("BEGIN IMMEDIATE").await?;
        let mut count = 0;
        for query in queries {
            sqlx::raw_sql(AssertSqlSafe(query))
                .execute(&mut *transaction)
                .await?;
            count += 1;
        }
        transaction.commit().await?;
        Ok(count)
    }
}

impl AsyncQuery<Vec<Migration>> for MigrationConnection {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        let rows = sqlx::query(AssertSqlSafe(query))
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(applied_migration).collect()
    }
}

impl AsyncMigrate for MigrationConnection {}

/// refinery stores `applied_on` as RFC 3339 text and the checksum as the text
/// of a `u64` (which may exceed SQLite's signed integers).
fn applied_migration(row: &sqlx::sqlite::SqliteRow) -> Result<Migration, sqlx::Error> {
    let version: i32 = row.try_get("version")?;
    let name: String = row.try_get("name")?;
    let applied_on: String = row.try_get("applied_on")?;
    let checksum: String = row.try_get("checksum")?;
    let applied_on = OffsetDateTime::parse(&applied_on, &Rfc3339)
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    let checksum = checksum
        .parse::<u64>()
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    Ok(Migration::applied(version, name, applied_on, checksum))
}

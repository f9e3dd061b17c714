//! ClickHouse schema migrations: the files under `deploy/clickhouse/`, applied in order
//! once each, recorded in `schema_migrations`.

use sendmill_platform::config::ClickHouseConfig;

/// `(version, name, sql)`; a file may hold several statements separated by `;`.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[(
    1,
    "0001_events",
    include_str!("../../deploy/clickhouse/0001_events.sql"),
)];

/// Creates the database and applies the migrations it lacks.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Vec<u32>, clickhouse::error::Error> {
    let server = sendmill_platform::clients::clickhouse_server(config);
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", config.database))
        .execute()
        .await?;
    let client = sendmill_platform::clients::clickhouse(config);
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations
             (version UInt32, name String, applied_at DateTime DEFAULT now())
             ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await?;
    let applied: Vec<u32> = client
        .query("SELECT version FROM schema_migrations")
        .fetch_all()
        .await?;
    let mut newly = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        for statement in sql.split(';').map(strip_comments).filter(|s| !s.is_empty()) {
            client.query(&statement).execute().await?;
        }
        client
            .query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(version)
            .bind(name)
            .execute()
            .await?;
        newly.push(version);
    }
    Ok(newly)
}

fn strip_comments(statement: &str) -> String {
    statement
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

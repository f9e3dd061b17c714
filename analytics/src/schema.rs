//! ClickHouse schema migrations: the files under `deploy/clickhouse/`, applied in order
//! once each, recorded in `schema_migrations`.

use sendmill_platform::config::ClickHouseConfig;

/// `(version, name, sql)`; a file may hold several statements separated by `;`.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_events",
        include_str!("../../deploy/clickhouse/0001_events.sql"),
    ),
    (
        2,
        "0002_engagement",
        include_str!("../../deploy/clickhouse/0002_engagement.sql"),
    ),
    (
        3,
        "0003_rollups",
        include_str!("../../deploy/clickhouse/0003_rollups.sql"),
    ),
    (
        4,
        "0004_contact_engagement",
        include_str!("../../deploy/clickhouse/0004_contact_engagement.sql"),
    ),
    (
        5,
        "0005_campaign_stats",
        include_str!("../../deploy/clickhouse/0005_campaign_stats.sql"),
    ),
];

/// Creates the database and applies the migrations it lacks.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Vec<u32>, clickhouse::error::Error> {
    let server = sendmill_platform::clients::clickhouse_server(config);
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`",
            config.database
        ))
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
        for statement in statements(sql) {
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

/// The statements of a migration file: comment lines dropped (they may hold `;`), then
/// split on `;`.
fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_in_comments_do_not_split_statements() {
        let got = statements("-- a; b\nCREATE TABLE a (x UInt8);\n-- c\nSELECT 1;\n");
        assert_eq!(got, ["CREATE TABLE a (x UInt8)", "SELECT 1"]);
        for (_, _, sql) in MIGRATIONS {
            assert!(statements(sql).iter().all(|s| ["CREATE", "ALTER", "INSERT"]
                .iter()
                .any(|k| s.starts_with(k))));
        }
    }
}

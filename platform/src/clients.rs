//! Clients for Redis and ClickHouse, built from config the same way in every stage.

use crate::config::{ClickHouseConfig, RedisConfig};

/// One multiplexed, self-reconnecting Redis connection shared by all tasks of a process.
pub async fn redis(config: &RedisConfig) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(config.url.as_str())?;
    let settings = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(
        config
            .response_timeout
            .max(std::time::Duration::from_millis(1)),
    ));
    redis::aio::ConnectionManager::new_with_config(client, settings).await
}

/// A ClickHouse client for Sendmill's database. Validation is off because ClickHouse
/// 18.16 (Debian's) knows neither the setting nor the format the crate validates with.
pub fn clickhouse(config: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse_server(config).with_database(&config.database)
}

/// A ClickHouse client without a database, for creating it.
pub fn clickhouse_server(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_validation(false);
    if !config.password.is_empty() {
        client = client.with_password(&config.password);
    }
    client
}

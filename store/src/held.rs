//! Rows changed inside an open transaction while the caller performs the side effect
//! that must go with the change (a Kafka write). Commit once the side effect is done;
//! dropping a `Held` rolls the change back, so a crash or a failed write leaves the rows
//! as they were and another attempt picks them up.

use crate::StoreError;
use sqlx::{Postgres, Transaction};

pub struct Held<T> {
    tx: Transaction<'static, Postgres>,
    pub items: Vec<T>,
}

impl<T> Held<T> {
    pub(crate) fn new(tx: Transaction<'static, Postgres>, items: Vec<T>) -> Self {
        Self { tx, items }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

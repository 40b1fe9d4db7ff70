//! The data set a donor is seeded with: several InnoDB tables with secondary indexes and a BLOB
//! column of random (incompressible) bytes, generated inside MySQL, and the checksums that prove
//! a recipient holds the same data.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::mysql::MysqlServer;

/// Bytes a seeded row takes on disk, roughly: 1 KiB payload plus row and index overhead.
const BYTES_PER_ROW: u64 = 1400;
/// Rows per INSERT statement, to keep each transaction moderate.
const ROWS_PER_INSERT: u64 = 20_000;

/// A data set of about `total_bytes`, spread over `tables` tables in `schema`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub schema: String,
    pub tables: usize,
    pub total_bytes: u64,
}

/// CHECKSUM TABLE of every table of a data set: `None` where the table is missing.
pub type Checksums = BTreeMap<String, Option<u64>>;

impl Dataset {
    /// About `total_bytes` over four tables in the schema `drill`.
    pub fn of_size(total_bytes: u64) -> Self {
        Dataset {
            schema: "drill".into(),
            tables: 4,
            total_bytes,
        }
    }

    pub fn table_names(&self) -> Vec<String> {
        (1..=self.tables)
            .map(|i| format!("{}.t{i}", self.schema))
            .collect()
    }

    fn rows_per_table(&self) -> u64 {
        (self.total_bytes / BYTES_PER_ROW / self.tables as u64).max(1)
    }

    /// Creates the schema and fills every table. Returns the bytes the tables take on disk
    /// (data and indexes, from information_schema after ANALYZE).
    pub async fn seed(&self, server: &MysqlServer) -> Result<u64> {
        let schema = &self.schema;
        server
            .sql(&format!("CREATE DATABASE IF NOT EXISTS {schema}"))
            .await?;
        for table in self.table_names() {
            server
                .sql(&format!(
                    "CREATE TABLE {table} (
                       id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                       k INT NOT NULL,
                       label CHAR(64) NOT NULL,
                       payload BLOB NOT NULL,
                       created_at DATETIME(6) NOT NULL,
                       KEY by_k (k),
                       KEY by_label (label)
                     ) ENGINE=InnoDB"
                ))
                .await?;
            let mut left = self.rows_per_table();
            while left > 0 {
                let rows = left.min(ROWS_PER_INSERT);
                server
                    .sql(&format!(
                        "SET SESSION cte_max_recursion_depth = {rows};
                         INSERT INTO {table} (k, label, payload, created_at)
                         WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows})
                         SELECT FLOOR(RAND() * 1000000), SHA2(CONCAT(n, RAND()), 256),
                                RANDOM_BYTES(1024), NOW(6)
                         FROM seq"
                    ))
                    .await
                    .with_context(|| format!("seeding {table}"))?;
                left -= rows;
            }
        }
        let tables = self.table_names().join(", ");
        server.sql(&format!("ANALYZE TABLE {tables}")).await?;
        let bytes = server
            .sql(&format!(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables
                 WHERE table_schema = '{schema}'"
            ))
            .await?;
        bytes
            .trim()
            .parse()
            .with_context(|| format!("size of the data set: {bytes:?}"))
    }

    /// Tables that differ between `donor` and `recipient` (empty when the clone is faithful).
    pub async fn compare(
        &self,
        donor: &MysqlServer,
        recipient: &MysqlServer,
    ) -> Result<Vec<String>> {
        Ok(mismatches(
            &self.checksums(donor).await?,
            &self.checksums(recipient).await?,
        ))
    }

    /// CHECKSUM TABLE of every table of the data set on `server`.
    pub async fn checksums(&self, server: &MysqlServer) -> Result<Checksums> {
        let rows = server
            .rows(&format!("CHECKSUM TABLE {}", self.table_names().join(", ")))
            .await?;
        let mut sums = Checksums::new();
        for row in rows {
            let [table, sum] = row.as_slice() else {
                bail!("unexpected CHECKSUM TABLE row {row:?}");
            };
            sums.insert(table.clone(), sum.parse().ok());
        }
        for table in self.table_names() {
            sums.entry(table).or_insert(None);
        }
        Ok(sums)
    }
}

/// Tables whose checksums differ between donor and recipient, or that are missing on either.
pub fn mismatches(donor: &Checksums, recipient: &Checksums) -> Vec<String> {
    donor
        .iter()
        .filter(|(table, sum)| sum.is_none() || recipient.get(*table) != Some(*sum))
        .map(|(table, _)| table.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_catch_differences_and_missing_tables() {
        let donor: Checksums = [("d.t1".into(), Some(1)), ("d.t2".into(), Some(2))].into();
        assert!(mismatches(&donor, &donor.clone()).is_empty());
        let other: Checksums = [("d.t1".into(), Some(1)), ("d.t2".into(), Some(3))].into();
        assert_eq!(mismatches(&donor, &other), ["d.t2"]);
        let missing: Checksums = [("d.t1".into(), Some(1)), ("d.t2".into(), None)].into();
        assert_eq!(mismatches(&donor, &missing), ["d.t2"]);
        let empty_donor: Checksums = [("d.t1".into(), None)].into();
        assert_eq!(mismatches(&empty_donor, &empty_donor.clone()), ["d.t1"]);
    }

    #[test]
    fn sizes_split_over_tables() {
        let d = Dataset::of_size(200 * 1024 * 1024);
        assert_eq!(d.table_names().len(), 4);
        assert!(d.rows_per_table() > 30_000);
    }
}

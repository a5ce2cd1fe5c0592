//! The conflict policies over registers: what one row shows, and which versions lost.
//!
//! - `lww` (last writer wins, the default): a write replaces the whole row; of concurrent
//!   versions the newest by hybrid time shows, the others are recorded as losers.
//! - `keep-both`: the same winner, and the row is flagged for a person while losers
//!   exist; a write that saw them (a resolution) clears the flag.
//! - `column-merge`: each column is its own register: concurrent edits of different
//!   columns both survive; of concurrent edits of one column the newest shows and the
//!   others are recorded. A delete writes every column's tombstone.
//!
//! A delete is a write too (a tombstone), so a concurrent update newer than the delete
//! brings the row back with the delete recorded as the loser, and an older one stays
//! recorded as lost: neither disappears without a trace.

use super::causal::VersionVector;
use super::register::{Dot, Register, Stamp, Version};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    LastWriterWins,
    ColumnMerge,
    KeepBoth,
}

impl Policy {
    /// The name an operator uses (`lww`, `column-merge`, `keep-both`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::LastWriterWins => "lww",
            Policy::ColumnMerge => "column-merge",
            Policy::KeepBoth => "keep-both",
        }
    }

    /// # Errors
    /// If `name` is not a policy, with the names that are.
    pub fn parse(name: &str) -> Result<Policy, String> {
        [Policy::LastWriterWins, Policy::ColumnMerge, Policy::KeepBoth]
            .into_iter()
            .find(|policy| policy.name() == name)
            .ok_or_else(|| format!("unknown conflict policy {name:?}: use lww, column-merge or keep-both"))
    }
}

/// A change to one row, as its origin region made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowWrite<V> {
    pub dot: Dot,
    pub stamp: Stamp,
    /// What the origin had applied when it made the write (see `CausalQueue`).
    pub seen: VersionVector,
    /// `Some(columns)`: the row's values after the write, `None` for a column the write
    /// left alone (whole-row policies need every column); `None`: the row was deleted.
    pub values: Option<Vec<Option<V>>>,
}

/// Why a write could not be applied to a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowError {
    /// Whole-row policies replace the row, so the write must carry every column.
    PartialImage { policy: Policy, dot: Dot },
    /// The write has another number of columns than the row.
    ColumnCount { expected: usize, got: usize, dot: Dot },
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowError::PartialImage { policy, dot } => write!(f, "write {dot} leaves columns out, which the {} policy cannot apply", policy.name()),
            RowError::ColumnCount { expected, got, dot } => write!(f, "write {dot} has {got} columns where the table has {expected}"),
        }
    }
}

impl std::error::Error for RowError {}

/// One row's versions under one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row<V> {
    policy: Policy,
    columns: usize,
    /// Whole-row policies: the row's versions (`None`: a tombstone).
    whole: Register<Option<Vec<V>>>,
    /// Column merge: each column (`None`: a delete's tombstone).
    cells: Vec<Register<Option<V>>>,
}

impl<V: Clone> Row<V> {
    pub fn new(policy: Policy, columns: usize) -> Row<V> {
        Row { policy, columns, whole: Register::default(), cells: (0..columns).map(|_| Register::default()).collect() }
    }

    /// Applies a write (delivered in causal order).
    ///
    /// # Errors
    /// If the write's shape does not fit the row or the policy; the row is unchanged.
    pub fn apply(&mut self, write: &RowWrite<V>) -> Result<(), RowError> {
        if let Some(values) = &write.values {
            if values.len() != self.columns {
                return Err(RowError::ColumnCount { expected: self.columns, got: values.len(), dot: write.dot.clone() });
            }
        }
        let (dot, stamp, seen) = (&write.dot, &write.stamp, &write.seen);
        match self.policy {
            Policy::LastWriterWins | Policy::KeepBoth => {
                let image = match &write.values {
                    Some(values) => Some(
                        values.iter().cloned().collect::<Option<Vec<V>>>().ok_or_else(|| RowError::PartialImage { policy: self.policy, dot: dot.clone() })?,
                    ),
                    None => None,
                };
                self.whole.write(dot.clone(), stamp.clone(), seen, image);
            }
            Policy::ColumnMerge => match &write.values {
                Some(values) => {
                    for (cell, value) in self.cells.iter_mut().zip(values) {
                        if let Some(value) = value {
                            cell.write(dot.clone(), stamp.clone(), seen, Some(value.clone()));
                        }
                    }
                }
                None => {
                    for cell in &mut self.cells {
                        cell.write(dot.clone(), stamp.clone(), seen, None);
                    }
                }
            },
        }
        Ok(())
    }

    /// What the row shows: `None` if it does not exist (never written, or deleted by the
    /// winning version); a column no version wrote shows `None`.
    pub fn visible(&self) -> Option<Vec<Option<V>>> {
        match self.policy {
            Policy::LastWriterWins | Policy::KeepBoth => {
                self.whole.winner().and_then(|version| version.value.as_ref()).map(|values| values.iter().cloned().map(Some).collect())
            }
            Policy::ColumnMerge => {
                // The row exists unless the newest of its columns' winning writes was a
                // delete (a newer concurrent edit brings back the columns it wrote).
                let newest = self.cells.iter().filter_map(Register::winner).max_by(|a, b| a.stamp.cmp(&b.stamp))?;
                newest.value.as_ref()?;
                Some(self.cells.iter().map(|cell| cell.winner().and_then(|version| version.value.clone())).collect())
            }
        }
    }

    /// The hybrid time of the newest version shown (whole row, or any column): which of
    /// two rows keeps a UNIQUE value they both claim.
    pub fn newest_stamp(&self) -> Option<&Stamp> {
        let whole = self.whole.winner().map(|version| &version.stamp);
        let cells = self.cells.iter().filter_map(Register::winner).map(|version| &version.stamp);
        whole.into_iter().chain(cells).max()
    }

    /// The versions that lost a conflict and are not yet replaced by a write that saw
    /// them: `(column, loser, winner)`, the column `None` for the whole row. The same in every region once the same
    /// writes are applied.
    pub fn conflicts(&self) -> Vec<Conflict<V>> {
        let mut found = Vec::new();
        let whole = |version: &Version<Option<Vec<V>>>| (version.dot.clone(), version.stamp.clone(), version.value.clone());
        if let Some(winner) = self.whole.winner() {
            found.extend(self.whole.losers().iter().map(|loser| Conflict { column: None, loser: whole(loser), winner: whole(winner) }));
        }
        for (column, cell) in self.cells.iter().enumerate() {
            let single = |version: &Version<Option<V>>| (version.dot.clone(), version.stamp.clone(), version.value.clone().map(|value| vec![value]));
            if let Some(winner) = cell.winner() {
                found.extend(cell.losers().iter().map(|loser| Conflict { column: Some(column), loser: single(loser), winner: single(winner) }));
            }
        }
        found
    }

    /// Keep-both: a person must choose (losers exist). Other policies decide alone.
    pub fn needs_resolution(&self) -> bool {
        self.policy == Policy::KeepBoth && !self.whole.losers().is_empty()
    }

    /// Forgets every losing version, keeping only the winners: what a store that did not
    /// record conflicts would do. It exists for the simulator's mutation check
    /// (`tern sim --topology multi-leader --mutate drop-conflicts` must report loss), and
    /// nothing else calls it.
    pub fn discard_conflicts(&mut self) {
        self.whole.keep_winner_only();
        for cell in &mut self.cells {
            cell.keep_winner_only();
        }
    }

    /// Every write whose version the row still holds (winners and losers).
    pub fn held_dots(&self) -> Vec<Dot> {
        let mut dots: Vec<Dot> = self.whole.versions().iter().map(|version| version.dot.clone()).collect();
        dots.extend(self.cells.iter().flat_map(|cell| cell.versions().iter().map(|version| version.dot.clone())));
        dots.sort();
        dots.dedup();
        dots
    }
}

/// A version that lost, and the one shown instead: `(write, when, values)`; `values` is
/// the row, or one column's value (`None`: a delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict<V> {
    pub column: Option<usize>,
    pub loser: (Dot, Stamp, Option<Vec<V>>),
    pub winner: (Dot, Stamp, Option<Vec<V>>),
}

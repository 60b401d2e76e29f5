//! The change stream's decisions: where a client's next changes come from.
//!
//! The feed keeps the newest changes in memory: every committed change with
//! `floor < seq <= head`. A client has a cursor (the last seq it was sent,
//! or skipped by its filter). Older changes are read from the database's
//! change log, which keeps those with `seq >= oldest`. Pure: the shell
//! passes the numbers in.

/// Where a new connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From this cursor: changes with a greater seq are sent.
    From(i64),
    /// The cursor is older than the oldest change still kept: say `reset`
    /// with `oldest` (the client reloads its view), then continue from
    /// `oldest - 1`.
    Reset { oldest: i64 },
}

/// Where a connection asking for `after` (from `Last-Event-ID` or
/// `?after=`) starts, given the head of the feed and the lowest seq the
/// log still keeps (`None`: the log is empty). Without a cursor: live from
/// the head (no backlog).
pub fn start(after: Option<i64>, head: i64, oldest: Option<i64>) -> Start {
    let Some(after) = after.map(|a| a.max(0)) else {
        return Start::From(head);
    };
    match oldest {
        // A change between the cursor and the oldest kept may have been
        // pruned: the client cannot be told what it missed.
        Some(oldest) if after.saturating_add(1) < oldest => Start::Reset { oldest },
        _ => Start::From(after),
    }
}

/// How a connection's cursor has been fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reading older changes from the database, page by page.
    CatchingUp,
    /// Reading from memory.
    Live,
}

/// The connection's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new: wait for the head to move (heartbeats meanwhile).
    Wait,
    /// Send the in-memory changes above the cursor.
    Memory,
    /// Read the next page after the cursor from the database.
    Database,
    /// The client fell behind what memory still holds while it was live:
    /// close the connection; it reconnects with `Last-Event-ID` and
    /// catches up from the database. A slow client never holds memory or
    /// a commit back.
    Drop,
}

/// The next step of a connection at `cursor`, in `mode`, while memory
/// holds `floor < seq <= head`.
pub fn step(cursor: i64, mode: Mode, floor: i64, head: i64) -> Step {
    if cursor >= head {
        Step::Wait
    } else if cursor >= floor {
        Step::Memory
    } else {
        match mode {
            Mode::Live => Step::Drop,
            Mode::CatchingUp => Step::Database,
        }
    }
}

/// The cursor after a database page read while memory held
/// `floor < seq <= head`: the last seq of the page, and when the page was
/// short (the log had no more), at least `floor` — everything up to the
/// floor has been read, even seqs a rolled-back writer never used.
pub fn after_page(cursor: i64, last_of_page: Option<i64>, short: bool, floor: i64) -> i64 {
    let cursor = last_of_page.map_or(cursor, |last| last.max(cursor));
    if short {
        cursor.max(floor)
    } else {
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_cursor_a_client_starts_live_at_the_head() {
        assert_eq!(start(None, 42, Some(1)), Start::From(42));
        assert_eq!(start(None, 0, None), Start::From(0));
    }

    #[test]
    fn a_cursor_within_the_log_resumes_after_it() {
        assert_eq!(start(Some(10), 42, Some(1)), Start::From(10));
        // The change right after the cursor is the oldest kept: nothing lost.
        assert_eq!(start(Some(9), 42, Some(10)), Start::From(9));
        // An empty log, or a cursor beyond the head, loses nothing either.
        assert_eq!(start(Some(5), 0, None), Start::From(5));
        assert_eq!(start(Some(50), 42, Some(1)), Start::From(50));
        assert_eq!(start(Some(-3), 42, Some(1)), Start::From(0));
    }

    #[test]
    fn a_cursor_older_than_the_log_resets() {
        assert_eq!(start(Some(8), 42, Some(10)), Start::Reset { oldest: 10 });
        assert_eq!(start(Some(0), 42, Some(2)), Start::Reset { oldest: 2 });
    }

    #[test]
    fn each_cursor_is_served_from_where_its_changes_are() {
        // Memory holds 100 < seq <= 200.
        assert_eq!(step(200, Mode::Live, 100, 200), Step::Wait);
        assert_eq!(step(250, Mode::CatchingUp, 100, 200), Step::Wait);
        assert_eq!(step(150, Mode::Live, 100, 200), Step::Memory);
        assert_eq!(step(100, Mode::Live, 100, 200), Step::Memory);
        assert_eq!(step(100, Mode::CatchingUp, 100, 200), Step::Memory);
        assert_eq!(step(99, Mode::CatchingUp, 100, 200), Step::Database);
    }

    #[test]
    fn a_live_client_that_fell_behind_memory_is_dropped() {
        assert_eq!(step(99, Mode::Live, 100, 200), Step::Drop);
        assert_eq!(step(0, Mode::Live, 100, 200), Step::Drop);
    }

    #[test]
    fn a_database_page_moves_the_cursor() {
        assert_eq!(after_page(10, Some(60), false, 100), 60);
        // A short page read everything up to the floor.
        assert_eq!(after_page(10, Some(60), true, 100), 100);
        assert_eq!(after_page(10, None, true, 100), 100);
        // Rows beyond the floor (also in memory) count as sent.
        assert_eq!(after_page(10, Some(120), true, 100), 120);
    }
}

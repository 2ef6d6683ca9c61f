//! A step's output read back: its `step.output` chunks in `seq` order, in
//! pages, and the lines they make, numbered across chunks.
//!
//! **Lines.** A step's log is the concatenation of its chunks (both streams) in
//! `seq` order, split on `\n`. Line N (from 1) is the text after the (N-1)th
//! `\n` up to the Nth, without it. The text after the last `\n`, if not empty,
//! is one more line, not yet ended. Each line takes the `seq`, timestamp and
//! stream of the chunk its first byte is in. `job_events.line` (how many `\n`
//! came before a chunk) lets a read start at any line without reading the
//! chunks before it.

use jobstream_protocol::{OutputStream, StepStatus, Timestamp};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::entity::{job_events, job_steps, jobs};
use crate::error::ReadError;
use crate::store::EventStore;

/// One `step.output` chunk of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    /// Its event's `seq`.
    pub seq: i64,
    /// How many `\n` the step's output held before it.
    pub line: i64,
    /// Its event's timestamp.
    pub timestamp: Timestamp,
    /// `stdout` or `stderr`.
    pub stream: OutputStream,
    /// The text as sent.
    pub chunk: String,
}

/// Where a page of chunks starts: after the chunk at `(line, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    line: i64,
    seq: i64,
}

impl LogCursor {
    /// Before the first chunk.
    pub const START: Self = Self { line: -1, seq: -1 };

    /// After `chunk`.
    pub fn after(chunk: &LogChunk) -> Self {
        Self { line: chunk.line, seq: chunk.seq }
    }
}

/// What a log read needs to know of a step.
#[derive(Debug, Clone)]
pub struct StepLogInfo {
    /// The workspace of the step's job (for the token check).
    pub workspace_id: String,
    /// The step's status.
    pub status: StepStatus,
    /// How many `\n` its output holds so far.
    pub output_lines: i64,
}

impl EventStore {
    /// The step `step_id` of job `job_id`, or `None` if there is no such step
    /// in that job (or no such job).
    pub async fn step_log_info(&self, job_id: Uuid, step_id: Uuid) -> Result<Option<StepLogInfo>, ReadError> {
        let Some(step) = job_steps::Entity::find_by_id(step_id).one(&self.db).await? else { return Ok(None) };
        if step.job_id != job_id {
            return Ok(None);
        }
        let workspace = jobs::Entity::find_by_id(job_id)
            .filter(crate::store::not_being_deleted())
            .select_only()
            .column(jobs::Column::WorkspaceId)
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        let Some(workspace_id) = workspace else { return Ok(None) };
        let status = StepStatus::from_wire_name(&step.status).unwrap_or(StepStatus::Failed);
        Ok(Some(StepLogInfo { workspace_id, status, output_lines: step.output_lines }))
    }

    /// Up to `limit` output chunks of step `step_id` after `after`, in `seq` order.
    pub async fn log_chunks(&self, step_id: Uuid, after: LogCursor, limit: u64) -> Result<Vec<LogChunk>, ReadError> {
        use job_events::Column as C;
        let rows = job_events::Entity::find()
            .select_only()
            .columns([C::Seq, C::Line, C::CreatedAt, C::Data])
            .filter(C::StepId.eq(step_id))
            .filter(
                Condition::any()
                    .add(C::Line.gt(after.line))
                    .add(Condition::all().add(C::Line.eq(after.line)).add(C::Seq.gt(after.seq))),
            )
            .order_by_asc(C::Line)
            .order_by_asc(C::Seq)
            .limit(limit)
            .into_tuple::<(i64, Option<i64>, chrono::DateTime<chrono::Utc>, serde_json::Value)>()
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|(seq, line, at, data)| {
                let output: jobstream_protocol::StepOutput = serde_json::from_value(data).map_err(|e| {
                    ReadError::Internal(sea_orm::DbErr::Custom(format!("output at seq {seq} is not valid: {e}")))
                })?;
                Ok(LogChunk {
                    seq,
                    line: line.unwrap_or(0),
                    timestamp: at.into(),
                    stream: output.stream,
                    chunk: output.chunk,
                })
            })
            .collect()
    }

    /// Where to read from for the line after `newlines` `\n` (line
    /// `newlines + 1`), and how many `\n` to skip from there: the last chunk
    /// that starts before that line (one index seek).
    pub async fn log_seek(&self, step_id: Uuid, newlines: i64) -> Result<(LogCursor, i64), ReadError> {
        use job_events::Column as C;
        if newlines <= 0 {
            return Ok((LogCursor::START, 0));
        }
        let found = job_events::Entity::find()
            .select_only()
            .columns([C::Line, C::Seq])
            .filter(C::StepId.eq(step_id))
            .filter(C::Line.lt(newlines))
            .filter(Expr::col(C::Line).is_not_null())
            .order_by_desc(C::Line)
            .order_by_desc(C::Seq)
            .limit(1)
            .into_tuple::<(i64, i64)>()
            .one(&self.db)
            .await?;
        Ok(match found {
            // Read from that chunk on: the cursor sits just before it.
            Some((line, seq)) => (LogCursor { line, seq: seq - 1 }, newlines - line),
            None => (LogCursor::START, 0),
        })
    }
}

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Its number, from 1.
    pub number: i64,
    /// The `seq` of the chunk its first byte is in.
    pub seq: i64,
    /// That chunk's timestamp.
    pub timestamp: Timestamp,
    /// That chunk's stream.
    pub stream: OutputStream,
    /// The text without its `\n` (cut at the assembler's limit, see `cut`).
    pub text: String,
    /// Whether its `\n` has been read (the last line of a log may not have one yet).
    pub ended: bool,
    /// Whether `text` was cut at the length limit.
    pub cut: bool,
}

/// Turns chunks into lines (pure: see the module docs for what a line is).
#[derive(Debug)]
pub struct LineAssembler {
    skip: i64,
    next: i64,
    current: Option<LogLine>,
    max_line_bytes: usize,
}

impl LineAssembler {
    /// Skips the first `skip` `\n`, then numbers lines from `first`; a line's
    /// text is kept up to `max_line_bytes` (cut at a character boundary).
    pub fn new(first: i64, skip: i64, max_line_bytes: usize) -> Self {
        Self { skip, next: first, current: None, max_line_bytes }
    }

    /// Reads one chunk; calls `emit` with each line it ends.
    pub fn push(&mut self, chunk: &LogChunk, mut emit: impl FnMut(LogLine)) {
        let mut text = chunk.chunk.as_str();
        while self.skip > 0 {
            match text.find('\n') {
                Some(at) => {
                    text = &text[at + 1..];
                    self.skip -= 1;
                }
                None => return,
            }
        }
        loop {
            let (piece, ended) = match text.find('\n') {
                Some(at) => (&text[..at], true),
                None => (text, false),
            };
            if piece.is_empty() && !ended && self.current.is_none() {
                return;
            }
            let max = self.max_line_bytes;
            let line = self.current.get_or_insert_with(|| {
                let line = LogLine {
                    number: self.next,
                    seq: chunk.seq,
                    timestamp: chunk.timestamp,
                    stream: chunk.stream,
                    text: String::new(),
                    ended: false,
                    cut: false,
                };
                // Numbers come from requests (`from`, `after`): at the end of i64 they stay there.
                self.next = self.next.saturating_add(1);
                line
            });
            append_capped(line, piece, max);
            if !ended {
                return;
            }
            if let Some(mut line) = self.current.take() {
                line.ended = true;
                emit(line);
            }
            text = &text[piece.len() + 1..];
        }
    }

    /// The line not ended yet, if it has any text.
    pub fn finish(self) -> Option<LogLine> {
        self.current
    }

    /// The number the next line started will take.
    pub fn next_number(&self) -> i64 {
        self.current.as_ref().map_or(self.next, |line| line.number)
    }
}

fn append_capped(line: &mut LogLine, piece: &str, max: usize) {
    let room = max.saturating_sub(line.text.len());
    if piece.len() <= room {
        line.text.push_str(piece);
        return;
    }
    let mut end = room;
    while end > 0 && !piece.is_char_boundary(end) {
        end -= 1;
    }
    line.text.push_str(&piece[..end]);
    line.cut = true;
}

/// `text` without ANSI escape sequences (CSI, OSC, two-byte ESC), for search.
pub fn visible_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates up to a final byte @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: i64, text: &str) -> LogChunk {
        LogChunk { seq, line: 0, timestamp: Timestamp::now(), stream: OutputStream::Stdout, chunk: text.to_owned() }
    }

    fn lines(first: i64, skip: i64, chunks: &[&str]) -> Vec<(i64, String, bool)> {
        let mut assembler = LineAssembler::new(first, skip, 1 << 20);
        let mut out = Vec::new();
        for (i, text) in chunks.iter().enumerate() {
            assembler.push(&chunk(i as i64 + 1, text), |l| out.push((l.number, l.text, l.ended)));
        }
        if let Some(l) = assembler.finish() {
            out.push((l.number, l.text, l.ended));
        }
        out
    }

    #[test]
    fn lines_are_split_on_newlines_across_chunks() {
        assert_eq!(
            lines(1, 0, &["a", "b\nc\n", "\n", "d"]),
            vec![(1, "ab".into(), true), (2, "c".into(), true), (3, "".into(), true), (4, "d".into(), false)]
        );
    }

    #[test]
    fn a_log_ending_with_a_newline_has_no_empty_last_line() {
        assert_eq!(lines(1, 0, &["x\n"]), vec![(1, "x".into(), true)]);
        assert_eq!(lines(1, 0, &[""]), vec![]);
    }

    #[test]
    fn skipped_newlines_start_the_numbering_later() {
        assert_eq!(lines(3, 2, &["a\nb", "\nc\nd"]), vec![(3, "c".into(), true), (4, "d".into(), false)]);
    }

    #[test]
    fn a_long_line_is_cut_at_a_character_boundary() {
        let mut assembler = LineAssembler::new(1, 0, 5);
        let mut out = Vec::new();
        assembler.push(&chunk(1, "ééé\n"), |l| out.push(l));
        assert_eq!(out[0].text, "éé");
        assert!(out[0].cut);
    }

    #[test]
    fn visible_text_drops_escape_sequences() {
        assert_eq!(visible_text("\x1b[1;31merror\x1b[0m: \x1b]8;;https://x\x1b\\link\x1b]8;;\x07"), "error: link");
    }
}

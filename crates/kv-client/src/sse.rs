//! An incremental Server-Sent Events parser (the `text/event-stream` format of the WHATWG HTML
//! standard, "Server-sent events"): bytes in, in chunks cut anywhere; messages out.
//!
//! Lines end in CRLF, LF or CR (a CRLF split across two chunks is one line end); a blank line
//! ends a message; lines starting with `:` are comments (keep-alives); `data` lines of one
//! message are joined with `\n`; one leading UTF-8 byte order mark is skipped. `event` and
//! `retry` are read and ignored (the watch API uses neither: the client keeps its own backoff).
//! Unlike a browser's EventSource, an empty `id` does not reset the cursor: the watch API
//! never sends one, and resuming from "no cursor" would silently skip changes.

use std::fmt;

/// One dispatched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The `id` this message set, if it had a (non-empty) `id` field.
    pub(crate) id: Option<String>,
    /// Its `data` lines joined with `\n`; `None` when it had no `data` field.
    pub(crate) data: Option<String>,
}

/// A message that grew past the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge(pub(crate) usize);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an event stream message longer than {} bytes", self.0)
    }
}

/// Parser state between chunks.
#[derive(Debug)]
pub(crate) struct Parser {
    /// Bytes of the line being read (without its line end).
    line: Vec<u8>,
    /// The last line ended in CR: an LF that comes next belongs to it.
    after_cr: bool,
    /// Nothing read yet: a byte order mark may come first.
    at_start: bool,
    data: Option<String>,
    id: Option<String>,
    /// Bytes held for the message being read (its lines so far and the current line).
    held: usize,
    limit: usize,
}

impl Parser {
    /// A parser that refuses messages (and lines) longer than `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Parser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: None,
            id: None,
            held: 0,
            limit,
        }
    }

    /// Reads `chunk`, pushing each message it completes onto `out`. After an error the
    /// parser's state is undefined: start a new one (the stream is dropped anyway).
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Message>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        if self.at_start && !rest.is_empty() {
            // The BOM may itself be split; hold bytes until three have arrived.
            self.line.extend_from_slice(rest);
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                return Ok(());
            }
            self.at_start = false;
            let mut held = std::mem::take(&mut self.line);
            if held.starts_with(b"\xEF\xBB\xBF") {
                held.drain(..3);
            }
            return self.feed(&held, out);
        }
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(end) => {
                    self.hold(end)?;
                    self.line.extend_from_slice(&rest[..end]);
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    if let Some(message) = self.line_ended(&line) {
                        out.push(message);
                    }
                }
                None => {
                    self.hold(rest.len())?;
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn hold(&mut self, more: usize) -> Result<(), TooLarge> {
        self.held += more;
        if self.held > self.limit {
            return Err(TooLarge(self.limit));
        }
        Ok(())
    }

    /// Processes one complete line; a blank one dispatches the message read so far.
    fn line_ended(&mut self, line: &[u8]) -> Option<Message> {
        if line.is_empty() {
            self.held = 0;
            let message = Message {
                id: self.id.take(),
                data: self.data.take(),
            };
            // A block of comments only (a keep-alive) is no message.
            return (message.id.is_some() || message.data.is_some()).then_some(message);
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.is_empty() && !value.contains('\0') => self.id = Some(value.to_owned()),
            // `event`, `retry`, an empty `id` and unknown fields are ignored.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Option<&str>, data: Option<&str>) -> Message {
        Message {
            id: id.map(str::to_owned),
            data: data.map(str::to_owned),
        }
    }

    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<Message> {
        let mut parser = Parser::new(1 << 20);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            parser.feed(&input[start..cut], &mut out).unwrap();
            start = cut;
        }
        out
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: keep-alive\r\n\r\n\
        id: c1\r\ndata: {\"a\":1}\r\n\r\n\
        id:c2\ndata: line one\ndata:line two\n\n\
        : keep-alive\n\n\
        id: c3\r\r\
        data\n\n\
        event: ignored\nretry: 10\nid\ndata: x\n\n\
        data: {\"type\":\"error\"}\r\n\r\n";

    fn expected() -> Vec<Message> {
        vec![
            message(Some("c1"), Some("{\"a\":1}")),
            message(Some("c2"), Some("line one\nline two")),
            message(Some("c3"), None),
            message(None, Some("")),
            message(None, Some("x")),
            message(None, Some("{\"type\":\"error\"}")),
        ]
    }

    #[test]
    fn every_message_kind_and_line_end_is_read() {
        assert_eq!(parse_in_pieces(STREAM, &[]), expected());
    }

    #[test]
    fn chunks_cut_anywhere_give_the_same_messages() {
        // Byte by byte: every CRLF and the BOM are split.
        let cuts: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(parse_in_pieces(STREAM, &cuts), expected());
        // Every pair of cut points.
        for a in 0..STREAM.len() {
            for b in (a..STREAM.len()).step_by(7) {
                assert_eq!(
                    parse_in_pieces(STREAM, &[a, b]),
                    expected(),
                    "cut at {a}, {b}"
                );
            }
        }
    }

    #[test]
    fn an_unfinished_message_is_not_dispatched() {
        assert_eq!(
            parse_in_pieces(b"id: c1\ndata: {}\n\nid: c2\ndata: {\"half", &[]),
            vec![message(Some("c1"), Some("{}"))]
        );
    }

    #[test]
    fn a_message_past_the_limit_is_refused() {
        let mut parser = Parser::new(16);
        let mut out = Vec::new();
        assert!(parser.feed(b"data: 0123456789\n\n", &mut out).is_ok());
        assert_eq!(out.len(), 1);
        let mut parser = Parser::new(16);
        assert_eq!(
            parser.feed(b"data: 0123456789\ndata: 0123456789", &mut out),
            Err(TooLarge(16))
        );
        let mut parser = Parser::new(16);
        let mut result = Ok(());
        for _ in 0..20 {
            result = result.and(parser.feed(b"xx", &mut out));
        }
        assert_eq!(result, Err(TooLarge(16)));
    }
}

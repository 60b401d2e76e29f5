//! A small reader of server-sent events (`GET /v1/stream`) on a reqwest
//! response, chunk by chunk (no extra reqwest feature).

/// One event: `event:` (default `message`), the last `id:`, the `data:`
/// lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Parses one block (the lines between blank lines). Comments (`:` lines,
/// the keep-alive) and blocks without data or event give `None`.
pub fn parse_block(block: &str) -> Option<SseEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    if data.is_none() && event.is_none() {
        return None;
    }
    Some(SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".to_string()),
        data: data.unwrap_or_default(),
    })
}

/// A `change` event's data (`GET /v1/stream`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChangeData {
    pub seq: i64,
    pub kind: String,
    pub key: String,
    pub runtime: Option<String>,
    pub at: i64,
}

impl SseEvent {
    /// The change this event announces, if it is a `change` event.
    pub fn change(&self) -> Option<ChangeData> {
        if self.event != "change" {
            return None;
        }
        serde_json::from_str(&self.data).ok()
    }
}

/// Reads events off a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    /// Bytes read and not yet parsed, CRs dropped (SSE lines may end in
    /// CRLF; no field value holds a CR). Bytes, so a character split
    /// between chunks stays whole.
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, reqwest::Error> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&String::from_utf8_lossy(&block)) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.response.chunk().await? {
                Some(bytes) => self
                    .buffer
                    .extend(bytes.iter().copied().filter(|b| *b != b'\r')),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_into_events_and_comments_into_nothing() {
        assert_eq!(
            parse_block("id: 7\nevent: change\ndata: {\"seq\":7}\n"),
            Some(SseEvent {
                id: Some("7".into()),
                event: "change".into(),
                data: "{\"seq\":7}".into()
            })
        );
        assert_eq!(parse_block(": keep-alive\n"), None);
        assert_eq!(
            parse_block("data: a\ndata: b"),
            Some(SseEvent {
                id: None,
                event: "message".into(),
                data: "a\nb".into()
            })
        );
        assert_eq!(
            parse_block("event: reset\ndata:{\"oldest\":3}"),
            Some(SseEvent {
                id: None,
                event: "reset".into(),
                data: "{\"oldest\":3}".into()
            })
        );
    }
}

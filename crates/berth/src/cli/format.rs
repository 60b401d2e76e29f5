//! Text output of the CLI: aligned tables, `key: value` lines, UTC
//! timestamps and JSON re-indentation. The layouts are written by hand:
//! each is small, and the formats are part of what users see.

use berth_core::image::Reference;

/// Columns are separated by this many spaces.
const GAP: usize = 3;

/// A header row and aligned columns. The last column is not padded, so
/// lines carry no trailing spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are cleaned of control characters so a value
    /// from the server cannot break the layout or drive the terminal.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows
            .push(cells.into_iter().map(|c| clean(c.as_ref())).collect());
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(std::iter::once(self.headers.len()))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                text.push_str(cell);
                if i + 1 < columns {
                    let pad = width - cell.chars().count() + GAP;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines, as `show` commands print them.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    out: String,
}

impl Fields {
    pub fn new() -> Self {
        Fields::default()
    }

    pub fn add(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        self.out.push_str(key);
        self.out.push_str(": ");
        self.out.push_str(&clean(value.as_ref()));
        self.out.push('\n');
        self
    }

    pub fn render(&self) -> String {
        self.out.clone()
    }
}

/// Replaces control characters (newlines, escapes) with spaces.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `-` for a missing value.
pub fn or_dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "-".to_string(),
    }
}

/// A millisecond Unix timestamp as UTC `YYYY-MM-DD HH:MM:SS`; the bare
/// number for one outside the years 1 to 9999.
pub fn format_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// The first 12 hex digits of a digest (`sha256:…`), as Docker shows ids.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

/// An image reference with its digest, if any, shortened:
/// `repo@sha256:0123456789ab`.
/// Text that is not a reference is shown as it is.
pub fn short_image_ref(reference: &str) -> String {
    match Reference::parse(reference) {
        Ok(Reference {
            repository,
            tag,
            digest: Some(digest),
        }) => {
            let name = Reference {
                repository,
                tag,
                digest: None,
            };
            format!("{name}@sha256:{}", short_digest(digest.as_str()))
        }
        _ => reference.to_string(),
    }
}

/// JSON text indented by `serde_json::to_string_pretty`, keys in the
/// order the server wrote them (serde_json's `preserve_order`); text that
/// is not JSON comes back as it is.
pub fn indented_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATUS", "ENDPOINT"]);
        t.row(["ws-1", "running", "172.18.0.2:8080"]);
        t.row(["a-much-longer-id", "stopped", ""]);
        assert_eq!(
            t.render(),
            "ID                 STATUS    ENDPOINT\n\
             ws-1               running   172.18.0.2:8080\n\
             a-much-longer-id   stopped\n"
        );
    }

    #[test]
    fn table_with_no_rows_prints_the_header() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A   B\n");
    }

    #[test]
    fn table_counts_characters_not_bytes_and_cleans_control_characters() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(["été", "1"]);
        t.row(["a\nb\x1b", "2"]);
        assert_eq!(t.render(), "NAME   X\nété    1\na b    2\n");
    }

    #[test]
    fn table_pads_short_rows() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(["1"]);
        assert_eq!(t.render(), "A   B   C\n1\n");
    }

    #[test]
    fn fields_are_key_value_lines() {
        let mut f = Fields::new();
        f.add("id", "ws-1").add("last_error", "bad\nthing");
        assert_eq!(f.render(), "id: ws-1\nlast_error: bad thing\n");
    }

    #[test]
    fn formats_timestamps_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms(999), "1970-01-01 00:00:00");
        assert_eq!(format_ms(-1), "1969-12-31 23:59:59");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14 22:13:20");
        assert_eq!(format_ms(4_107_542_399_000), "2100-02-28 23:59:59");
        assert_eq!(format_ms(4_107_542_400_000), "2100-03-01 00:00:00");
        assert_eq!(format_ms(253_402_300_799_000), "9999-12-31 23:59:59");
        assert_eq!(format_ms(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn shortens_digests_and_references() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(short_digest(&format!("sha256:{hex}")), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
        assert_eq!(
            short_image_ref(&format!("reg.example:5000/acme/engine@sha256:{hex}")),
            "reg.example:5000/acme/engine@sha256:0123456789ab"
        );
        assert_eq!(
            short_image_ref(&format!("reg.example:5000/acme/engine:v1@sha256:{hex}")),
            "reg.example:5000/acme/engine:v1@sha256:0123456789ab"
        );
        assert_eq!(
            short_image_ref("reg.example:5000/acme/engine:v1"),
            "reg.example:5000/acme/engine:v1"
        );
        assert_eq!(short_image_ref("not a@reference"), "not a@reference");
    }

    #[test]
    fn indents_json_keeping_the_servers_key_order() {
        assert_eq!(
            indented_json(r#"{"z":true,"a":[1,{}],"m":{"y":null,"b":"x"}}"#),
            "{\n  \"z\": true,\n  \"a\": [\n    1,\n    {}\n  ],\n  \"m\": {\n    \"y\": null,\n    \"b\": \"x\"\n  }\n}"
        );
        assert_eq!(
            indented_json("{\"b\": 1,\n \"a\": [ ] }"),
            "{\n  \"b\": 1,\n  \"a\": []\n}"
        );
        assert_eq!(indented_json("not json"), "not json");
    }
}

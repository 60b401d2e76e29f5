//! One way to say what an error was and why: `a: b: c`. The clients in
//! the build (reqwest, bollard) say little at the top ("error sending
//! request", "Error in the hyper legacy client"); the causes say why.

use std::error::Error;

/// The error followed by each cause whose text it does not already hold.
pub fn describe(e: &dyn Error) -> String {
    let mut text = e.to_string();
    append_causes(&mut text, e.source());
    text
}

/// The causes alone, for an error whose own text must not be shown (a
/// request error's text carries its URL, and the URL may carry secrets);
/// `None` when it has none.
pub fn causes(e: &dyn Error) -> Option<String> {
    let first = e.source()?;
    let mut text = first.to_string();
    append_causes(&mut text, first.source());
    Some(text)
}

fn append_causes(text: &mut String, mut source: Option<&dyn Error>) {
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    fn chain(parts: &[&'static str]) -> Layer {
        let mut layer = None;
        for p in parts.iter().rev() {
            layer = Some(Layer(p, layer.map(Box::new)));
        }
        layer.unwrap()
    }

    #[test]
    fn describe_joins_causes_and_skips_repeated_ones() {
        let e = chain(&[
            "error sending request",
            "connect failed",
            "connection refused",
        ]);
        assert_eq!(
            describe(&e),
            "error sending request: connect failed: connection refused"
        );
        let e = chain(&["io error: connection refused", "connection refused"]);
        assert_eq!(describe(&e), "io error: connection refused");
    }

    #[test]
    fn causes_leave_the_top_out() {
        let e = chain(&["GET https://h/?token=s3cret", "timed out"]);
        assert_eq!(causes(&e).as_deref(), Some("timed out"));
        assert_eq!(causes(&chain(&["alone"])), None);
    }
}

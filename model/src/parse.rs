//! Splitting a multi-document YAML (or JSON) text into documents, each remembered with the file it came
//! from and its position, so that every later error can say where it is.

use serde_json::Value;
use std::fmt;

/// One document of an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file name (or `-` for standard input).
    pub source: String,
    /// 1-based position among the non-empty documents of the file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub value: Value,
}

/// A document that is not well-formed YAML/JSON, or not an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub source: String,
    pub index: usize,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (starting at line {}): {}",
            self.source, self.index, self.line, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Whether a line is a YAML document separator (`---`, optionally followed by a comment or content
/// after a space).
fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "..."
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Parses every document of `text`. Fails on the first malformed document, naming it.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, ParseError> {
    let mut docs = Vec::new();
    let mut chunk = String::new();
    let mut chunk_line = 1;
    let mut index = 0;
    let mut flush = |chunk: &mut String, start: usize| -> Result<(), ParseError> {
        if is_blank(chunk) {
            chunk.clear();
            return Ok(());
        }
        index += 1;
        let err = |message: String| ParseError {
            source: source.to_string(),
            index,
            line: start,
            message,
        };
        let value: Value = serde_saphyr::from_str(chunk).map_err(|e| err(yaml_error(&e, start)))?;
        if !value.is_object() {
            return Err(err(
                "a document must be a mapping with apiVersion, kind and metadata".into(),
            ));
        }
        docs.push(Document {
            source: source.to_string(),
            index,
            line: start,
            value,
        });
        chunk.clear();
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        if is_separator(line.trim_end()) {
            flush(&mut chunk, chunk_line)?;
            chunk_line = i + 2;
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    flush(&mut chunk, chunk_line)?;
    Ok(docs)
}

/// One line saying what is wrong and where, with the line counted from the start of the file.
fn yaml_error(e: &serde_saphyr::Error, doc_start: usize) -> String {
    static LOCATION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(error: )?(line \d+ column \d+: )?|( at line \d+, column \d+)$")
            .expect("static regex")
    });
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let what = LOCATION.replace_all(first, "");
    match e.location() {
        Some(loc) if loc.line() > 0 => format!(
            "YAML syntax error at line {}, column {}: {what}",
            doc_start as u64 + loc.line() - 1,
            loc.column()
        ),
        _ => format!("YAML syntax error: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_skips_empty_documents() {
        let text = "---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\"}}\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert_eq!(docs[0].line, 4);
        assert_eq!(docs[1].value["metadata"]["name"], "b");
    }

    #[test]
    fn names_the_broken_document() {
        let text = "kind: A\n---\nkind: B\n---\nkind: [unclosed\n";
        let e = parse_documents("bad.yaml", text).unwrap_err();
        assert_eq!((e.index, e.line), (3, 5));
        assert_eq!(
            e.to_string(),
            "bad.yaml: document 3 (starting at line 5): YAML syntax error at line 5, column 7: unclosed bracket '['"
        );
    }

    #[test]
    fn numbers_and_booleans_keep_their_types() {
        let docs = parse_documents("f", "a: 80\nb: true\nc: \"80\"\nd: on\n").unwrap();
        let v = &docs[0].value;
        assert_eq!(v["a"], 80);
        assert_eq!(v["b"], true);
        assert_eq!(v["c"], "80");
        // YAML 1.1 booleans, as kubectl (go-yaml v2) reads them.
        assert_eq!(v["d"], true);
    }
}

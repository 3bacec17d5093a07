//! Problems found in a manifest, each tied to the line and the field it is about.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One thing wrong with a manifest or with a component it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line (from 1) the problem is on, if it is on one.
    pub line: Option<usize>,
    /// The id of the component whose table holds the problem, if any.
    pub component: Option<String>,
    /// The field, as a dotted path within the component's table (`limits.deadline`) or
    /// from the top of the manifest (`runtime.listen`).
    pub field: Option<String>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl Problem {
    /// A problem with no line or field.
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            line: None,
            component: None,
            field: None,
            message: message.into(),
        }
    }

    /// Place the problem on a line.
    pub fn line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    /// Name the component the problem concerns.
    pub fn component(mut self, id: impl Into<String>) -> Self {
        self.component = Some(id.into());
        self
    }

    /// Name the field the problem is in.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.component {
            write!(f, "component `{id}`: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one manifest file, printed one per line as `FILE:LINE: problem`,
/// the way compilers write them, so that editors and terminals can jump to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The manifest file, as it was named.
    pub file: PathBuf,
    /// What is wrong with it, in the order found.
    pub problems: Vec<Problem>,
}

impl Diagnostics {
    /// No problems yet in `file`.
    pub fn new(file: &Path) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// Record a problem.
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match problem.line {
                Some(line) => write!(f, "{}:{line}: {problem}", self.file.display())?,
                None => write!(f, "{}: {problem}", self.file.display())?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The line (from 1) of byte `offset` in `source`.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns a TOML error (syntax, or a value serde refused) into a problem on its line, naming
/// the field it is in. toml's messages name the unknown field or variant but not where the
/// offending value sits, so the field is found by looking up the error's span in the
/// document's own spans.
pub(crate) fn from_toml_error(source: &str, err: &toml::de::Error) -> Problem {
    let mut problem = Problem::new(err.message().trim_end().to_string());
    let Some(span) = err.span() else {
        return problem;
    };
    problem.line = Some(line_of(source, span.start));
    if let Ok(doc) = DeTable::parse(source) {
        let (component, mut field) = locate(doc.get_ref(), &span);
        // serde reports a missing field at the table that lacks it.
        if let Some(missing) = missing_field(err.message()) {
            field = Some(match field {
                Some(path) => format!("{path}.{missing}"),
                None => missing.to_string(),
            });
        }
        problem.component = component;
        problem.field = field;
    }
    problem
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
        .filter(|name| !name.is_empty())
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The component (by id) and the field whose key or value spans `span` most closely.
fn locate(doc: &DeTable<'_>, span: &Range<usize>) -> (Option<String>, Option<String>) {
    let mut best: Option<(usize, Vec<Segment>)> = None;
    let mut path = Vec::new();
    visit_table(doc, span, &mut path, &mut best);
    let Some((_, path)) = best else {
        return (None, None);
    };

    // Within a `[[component]]` table, name the component by its id rather than its index.
    let (component, rest) = match path.as_slice() {
        [Segment::Key(key), Segment::Index(index), rest @ ..] if key == "component" => {
            let id = doc
                .get("component")
                .and_then(|array| array.get_ref().get(*index))
                .and_then(|table| table.get_ref().get("id"))
                .and_then(|id| id.get_ref().as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{}", index + 1));
            (Some(id), rest)
        }
        _ => (None, path.as_slice()),
    };
    let mut field = String::new();
    for segment in rest {
        match segment {
            Segment::Key(key) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Index(index) => field.push_str(&format!("[{index}]")),
        }
    }
    (component, (!field.is_empty()).then_some(field))
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

fn consider(
    node: &Range<usize>,
    span: &Range<usize>,
    path: &[Segment],
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    if !covers(node, span) {
        return;
    }
    let width = node.end - node.start;
    let better = match best {
        None => true,
        // The narrowest node wins; between equals, the deeper one.
        Some((best_width, best_path)) => {
            width < *best_width || (width == *best_width && path.len() > best_path.len())
        }
    };
    if better {
        *best = Some((width, path.to_vec()));
    }
}

fn visit_table(
    table: &DeTable<'_>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        consider(&key.span(), span, path, best);
        visit_value(value, span, path, best);
        path.pop();
    }
}

fn visit_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    consider(&value.span(), span, path, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, span, path, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                path.push(Segment::Index(index));
                visit_value(item, span, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        let source = "a = 1\nb = 2\n";
        assert_eq!(line_of(source, 0), 1);
        assert_eq!(line_of(source, 6), 2);
        assert_eq!(line_of(source, 1000), 3);
    }

    #[test]
    fn a_problem_reads_file_line_component_field_message() {
        let mut diagnostics = Diagnostics::new(Path::new("courier.toml"));
        diagnostics.push(
            Problem::new("bad")
                .line(7)
                .component("ping")
                .field("limits.deadline"),
        );
        diagnostics.push(Problem::new("no components"));
        assert_eq!(
            diagnostics.to_string(),
            "courier.toml:7: component `ping`: `limits.deadline`: bad\ncourier.toml: no components"
        );
    }
}

//! Validation errors that point at the field at fault.

use std::fmt;

/// One step of a path into a config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A named field, such as `members`.
    Field(&'static str),
    /// A position in a list, such as `[1]`.
    Index(usize),
    /// An object in a list found by its name, such as `[web]`.
    Name(String),
    /// A field as the document named it (one the model does not know).
    Key(String),
}

/// Where in a document a problem is, rendered like `pools[1].members[0].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Segment>);

impl Path {
    /// The empty path (the document itself).
    pub fn root() -> Self {
        Path(Vec::new())
    }

    /// This path followed by a field name.
    pub fn field(&self, name: &'static str) -> Self {
        self.with(Segment::Field(name))
    }

    /// This path followed by a list position.
    pub fn index(&self, i: usize) -> Self {
        self.with(Segment::Index(i))
    }

    /// This path followed by a field the document named `name`.
    pub fn key(&self, name: &str) -> Self {
        self.with(Segment::Key(name.to_owned()))
    }

    /// This path followed by a list entry named `name`.
    pub fn name(&self, name: &str) -> Self {
        self.with(Segment::Name(name.to_owned()))
    }

    fn with(&self, seg: Segment) -> Self {
        let mut segs = self.0.clone();
        segs.push(seg);
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Field(name) if i == 0 => write!(f, "{name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key(name) if i == 0 => write!(f, "{name}")?,
                Segment::Key(name) => write!(f, ".{name}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Name(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem in a config: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault.
    pub path: Path,
    /// Why it is wrong, in words for the operator.
    pub message: String,
}

impl FieldError {
    pub fn new(path: Path, message: impl Into<String>) -> Self {
        FieldError {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.0.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

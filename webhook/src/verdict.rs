//! What a rule decides: denials, warnings and a JSON patch. Rules accumulate into
//! one verdict so a user sees every problem in one `kubectl apply`.

use json_patch::PatchOperation;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdict {
    pub denials: Vec<String>,
    pub warnings: Vec<String>,
    pub patch: Vec<PatchOperation>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.denials.is_empty()
    }

    pub fn deny(&mut self, message: impl Into<String>) {
        self.denials.push(message.into());
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The one message the API server shows for a denial.
    pub fn message(&self) -> Option<String> {
        (!self.denials.is_empty()).then(|| self.denials.join("; "))
    }
}

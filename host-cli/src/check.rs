//! `courier check`: the manifest, then every component it names against the world.

use std::path::Path;
use std::process::ExitCode;

use crate::diagnostics::{Diagnostics, Problem};
use crate::load;
use crate::manifest::Manifest;
use crate::run::report_problems;

/// Check the manifest at `file` and load every component it names (compile, check exports
/// and imports against world `courier:actor/actor`, link). Prints every problem with its
/// line, and fails if there was any.
pub fn check(file: &Path) -> ExitCode {
    let diagnostics = problems(file);
    if diagnostics.is_empty() {
        println!("courier: {} is fine", file.display());
        ExitCode::SUCCESS
    } else {
        report_problems(&diagnostics)
    }
}

/// Every problem in the manifest at `file` and in the components it names. Components that
/// the manifest declares correctly are loaded even when others are not, so one run reports
/// everything there is to fix.
pub fn problems(file: &Path) -> Diagnostics {
    let (manifest, mut diagnostics) = Manifest::load_lenient(file);
    let Some(manifest) = manifest else {
        return diagnostics;
    };
    if manifest.components.is_empty() {
        return diagnostics;
    }
    let engine = match load::engine(&manifest) {
        Ok(engine) => engine,
        Err(problem) => {
            diagnostics.push(problem);
            return diagnostics;
        }
    };
    if let Err(problems) = load::components(&engine, &manifest) {
        let problems: Vec<Problem> = problems;
        diagnostics.problems.extend(problems);
        // Report in the order of the file.
        diagnostics.problems.sort_by_key(|p| p.line.unwrap_or(0));
    }
    diagnostics
}

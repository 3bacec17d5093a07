//! The `#[handler]` attribute's contract, checked by compiling small components natively:
//! the forms it accepts compile, and each mistake is a compile error at the offending item
//! that says what was expected. The expected errors are the `.stderr` files beside the
//! cases in `tests/ui/`; regenerate them with `TRYBUILD=overwrite cargo test -p
//! courier-sdk-macros` and review the diff.

#[test]
fn handler_forms_compile_and_mistakes_are_explained() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/pass/*.rs");
    cases.compile_fail("tests/ui/*.rs");
}

//! Components are checked against world `courier:actor/actor` when they are loaded.

use courier_host_core::{Engine, ErrorKind};
use courier_test_support::guest_bytes;

use crate::common::Setup;

fn engine() -> Engine {
    Setup::new().engine
}

#[test]
fn a_component_without_handle_message_is_refused_naming_the_export() {
    let err = engine()
        .load_component("no-handler", &guest_bytes("no_handler"))
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::MissingExport {
                export: "handle-message"
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`no-handler`") && text.contains("`handle-message`"),
        "{text}"
    );
}

#[test]
fn a_mistyped_handle_message_is_refused_with_both_types() {
    let err = engine()
        .load_component("wrong-signature", &guest_bytes("wrong_signature"))
        .unwrap_err();
    let ErrorKind::ExportType { export, found, .. } = err.kind() else {
        panic!("expected an export type error, got {err}");
    };
    assert_eq!(*export, "handle-message");
    assert!(found.contains("message: string"), "{found}");
    assert!(err.to_string().contains("list<u8>"), "{err}");
}

#[test]
fn a_mistyped_state_export_is_refused_naming_it_with_both_types() {
    let err = engine()
        .load_component("wrong-state", &guest_bytes("wrong_state"))
        .unwrap_err();
    let ErrorKind::ExportType {
        export,
        expected,
        found,
    } = err.kind()
    else {
        panic!("expected an export type error, got {err}");
    };
    assert_eq!(*export, "courier:actor/state@0.1.0#save-state");
    assert_eq!(found, "func() -> string");
    assert_eq!(expected, "func() -> list<u8>");
    assert!(
        err.to_string()
            .contains("world courier:actor/stateful-actor requires"),
        "{err}"
    );
}

#[test]
fn an_import_the_host_does_not_provide_is_refused_by_name() {
    let err = engine()
        .load_component("alien", &guest_bytes("alien_import"))
        .unwrap_err();
    let ErrorKind::UnknownImport { import } = err.kind() else {
        panic!("expected an unknown import error, got {err}");
    };
    assert_eq!(err.component(), Some("alien"));
    assert!(import.starts_with("courier:alien/rocket"), "{import}");
}

#[test]
fn garbage_bytes_are_refused_as_an_invalid_component() {
    let err = engine()
        .load_component("garbage", b"\0asm this is not a component")
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidComponent), "{err}");
    assert!(err.to_string().contains("`garbage`"), "{err}");
}

#[test]
fn a_missing_file_is_reported_with_its_path() {
    let err = engine()
        .load_component_file("ghost", "/nonexistent/ghost.wasm")
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/ghost.wasm"), "{err}");
    let source = std::error::Error::source(&err).expect("the I/O error is kept");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("an I/O error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn every_example_component_passes_the_check() {
    let setup = Setup::new();
    for name in ["echo", "counter", "looper", "memhog", "panicker", "probe"] {
        setup.load(name);
    }
}

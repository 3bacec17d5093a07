//! A component whose handlers are correct but which imports `courier:alien/rocket`, an
//! interface the Courier host does not provide. A plain host must refuse it at load time and
//! name the unknown import, instead of a bare link error; a host whose embedder linked that
//! interface (`EngineBuilder::link`) must run it.

use courier::alien::rocket;

wit_bindgen::generate!({
    path: "wit",
    world: "alien-import",
    // wit-bindgen only generates interfaces from other packages (here `courier:alien`, under
    // `wit/deps/`) when asked to.
    generate_all,
});

/// Correct handlers that call the alien import. The calls are what keep the import in the
/// component: an import no code uses could be dropped when the component is built.
struct AlienImport;

impl Guest for AlienImport {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        rocket::launch();
        Ok(())
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        rocket::launch();
        Ok(request)
    }
}

export!(AlienImport);

//! Loading a component and checking it against world `courier:actor/actor`.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Type;
use wasmtime::component::types::{ComponentFunc, ComponentItem};

use crate::bindings::{ActorIndices, ActorPre};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::host::HostState;
use wasmtime::component::ComponentExportIndex;

/// The interfaces of world `courier:actor/actor` that the host provides besides WASI.
const COURIER_IMPORTS: [&str; 4] = [
    "courier:actor/types@0.1.0",
    "courier:actor/messaging@0.1.0",
    "courier:actor/host-services@0.1.0",
    "courier:actor/timers@0.1.0",
];

const COMPONENT_ERROR: &str =
    "variant { invalid-message(string), unsupported(string), internal(string) }";

/// An export the world requires, with the signature it must have (parameter names aside).
struct RequiredExport {
    name: &'static str,
    params: &'static [&'static str],
    result: &'static str,
    signature: &'static str,
}

const REQUIRED_EXPORTS: [RequiredExport; 2] = [
    RequiredExport {
        name: "handle-message",
        params: &["string", "list<u8>"],
        result: "result<_, component-error>",
        signature: "func(sender: component-id, message: list<u8>) -> result<_, component-error>",
    },
    RequiredExport {
        name: "handle-request",
        params: &["string", "list<u8>"],
        result: "result<list<u8>, component-error>",
        signature: "func(sender: component-id, request: list<u8>) -> result<list<u8>, component-error>",
    },
];

/// The `state` interface's functions, as world `stateful-actor` declares them; checked
/// only in a component that exports the interface.
const STATE_EXPORTS: [RequiredExport; 2] = [
    RequiredExport {
        name: "courier:actor/state@0.1.0#save-state",
        params: &[],
        result: "list<u8>",
        signature: "func() -> list<u8>",
    },
    RequiredExport {
        name: "courier:actor/state@0.1.0#load-state",
        params: &["list<u8>"],
        result: "result<_, component-error>",
        signature: "func(state: list<u8>) -> result<_, component-error>",
    },
];

/// A compiled component, checked against the world and linked once, ready to instantiate.
///
/// Cloning is cheap. Linking is done here, at load time (`InstancePre`), so that spawning an
/// instance does no linking work.
#[derive(Clone)]
pub struct Component {
    pub(crate) inner: Arc<ComponentInner>,
}

pub(crate) struct ComponentInner {
    pub(crate) name: String,
    /// A digest of the component's bytes: which version of it this is.
    pub(crate) version: String,
    pub(crate) engine: Engine,
    /// Linked once, with the typed exports of world `actor` looked up: instantiating does
    /// neither again.
    pub(crate) pre: ActorPre<HostState>,
    /// The exports' indices, looked up once, for instances made from `pre`'s
    /// `InstancePre` (so the instance itself is kept too).
    pub(crate) indices: ActorIndices,
    /// The `state` interface of world `stateful-actor`, if the component exports it.
    pub(crate) state: Option<StateExports>,
}

/// Where a component's `save-state` and `load-state` are.
pub(crate) struct StateExports {
    pub(crate) save: ComponentExportIndex,
    pub(crate) load: ComponentExportIndex,
}

/// The name of the interface world `stateful-actor` exports.
const STATE_INTERFACE: &str = "courier:actor/state@0.1.0";

/// The `state` exports of `component`, if it has both.
fn state_exports(component: &wasmtime::component::Component) -> Option<StateExports> {
    let interface = component.get_export_index(None, STATE_INTERFACE)?;
    Some(StateExports {
        save: component.get_export_index(Some(&interface), "save-state")?,
        load: component.get_export_index(Some(&interface), "load-state")?,
    })
}

impl Component {
    /// The name the component was loaded under.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Which version of the component this is: 16 hex digits of a 64-bit FNV-1a digest of
    /// its bytes, the same for the same bytes on every host. It tells versions apart; it
    /// is not a cryptographic hash and proves nothing about who made the bytes.
    ///
    /// ```no_run
    /// # fn run(engine: courier_host_core::Engine) -> courier_host_core::Result<()> {
    /// let echo = engine.load_component_file("echo", "target/guests/echo.wasm")?;
    /// assert_eq!(echo.version().len(), 16);
    /// # Ok(()) }
    /// ```
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// Whether the component exports the `state` interface of world `stateful-actor`, so
    /// its state can move to another instance ([`Instance::save_state`],
    /// [`Instance::load_state`]).
    ///
    /// [`Instance::save_state`]: crate::Instance::save_state
    /// [`Instance::load_state`]: crate::Instance::load_state
    pub fn keeps_state(&self) -> bool {
        self.inner.state.is_some()
    }

    /// The engine the component was compiled for.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .finish()
    }
}

impl Engine {
    /// Compile `bytes` as the component `name`, check it against the world and link it.
    ///
    /// `name` is only used in errors and logs; instances get their own ids.
    pub fn load_component(&self, name: &str, bytes: &[u8]) -> Result<Component> {
        let wasmtime = &self.inner.wasmtime;
        let component = wasmtime::component::Component::new(wasmtime, bytes)
            .map_err(|err| Error::new(name, ErrorKind::InvalidComponent).caused_by(err))?;
        check_exports(name, wasmtime, &component)?;
        // An embedder's own host interfaces are known to the linker alone, so with them the
        // linker decides, and its error names the import it lacks.
        if !self.inner.extended {
            check_imports(name, wasmtime, &component)?;
        }
        let link_error = |err| Error::new(name, ErrorKind::Link).caused_by(err);
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        // wasmtime's own type check of the exports, after ours, which has the better
        // messages: what passes both is called through the typed bindings.
        let pre = ActorPre::new(pre).map_err(link_error)?;
        let indices = ActorIndices::new(pre.instance_pre()).map_err(link_error)?;
        Ok(Component {
            inner: Arc::new(ComponentInner {
                name: name.to_string(),
                version: version_of(bytes),
                engine: self.clone(),
                pre,
                indices,
                state: state_exports(&component),
            }),
        })
    }

    /// Read a component from a file and load it as [`Engine::load_component`] does.
    pub fn load_component_file(&self, name: &str, path: impl AsRef<Path>) -> Result<Component> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|err| {
            let path = path.to_path_buf();
            Error::new(name, ErrorKind::Read { path }).caused_by_io(err)
        })?;
        self.load_component(name, &bytes)
    }
}

/// The digest [`Component::version`] names a component's bytes by.
fn version_of(bytes: &[u8]) -> String {
    let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{digest:016x}")
}

/// Checks that the component exports both handlers with the world's signatures, and, if it
/// exports `state`, both of its functions with theirs.
fn check_exports(
    name: &str,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Result<()> {
    let ty = component.component_type();

    for required in &REQUIRED_EXPORTS {
        let item = ty.get_export(engine, required.name).map(|export| export.ty);
        check_export(name, required, item)?;
    }
    // A component that exports `state` is called through it on upgrades and restarts: its
    // functions are checked here, where the error can name them, not at their first call.
    let Some(state) = ty.get_export(engine, STATE_INTERFACE) else {
        return Ok(());
    };
    let ComponentItem::ComponentInstance(interface) = &state.ty else {
        let kind = ErrorKind::ExportType {
            export: STATE_INTERFACE,
            expected: "an instance of interface `state`".into(),
            found: describe_item(&state.ty).into(),
        };
        return Err(Error::new(name, kind));
    };
    for required in &STATE_EXPORTS {
        let (_, function) = required.name.split_once('#').unwrap_or_default();
        let item = interface
            .get_export(engine, function)
            .map(|export| export.ty);
        check_export(name, required, item)?;
    }
    Ok(())
}

/// Checks that `item`, the export `required` names, is there and has its signature.
fn check_export(name: &str, required: &RequiredExport, item: Option<ComponentItem>) -> Result<()> {
    let Some(item) = item else {
        let export = required.name;
        return Err(Error::new(name, ErrorKind::MissingExport { export }));
    };
    let mismatch = |found: String| {
        let kind = ErrorKind::ExportType {
            export: required.name,
            expected: required.signature.to_string(),
            found,
        };
        Error::new(name, kind)
    };
    let ComponentItem::ComponentFunc(func) = item else {
        return Err(mismatch(describe_item(&item).to_string()));
    };
    let params: Vec<String> = func.params().map(|(_, ty)| describe(&ty)).collect();
    let results: Vec<String> = func.results().map(|ty| describe(&ty)).collect();
    let expected_result = required.result.replace("component-error", COMPONENT_ERROR);
    if params != required.params || results != [expected_result] {
        return Err(mismatch(describe_func(&func)));
    }
    Ok(())
}

/// Checks that the host provides everything the component imports: WASI and the Courier
/// interfaces.
fn check_imports(
    name: &str,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Result<()> {
    for (import, item) in component.component_type().imports(engine) {
        let provided = import.starts_with("wasi:") || COURIER_IMPORTS.contains(&import);
        // An instance that carries only types (a world's `use` of an interface) needs
        // nothing from the host, whatever its name.
        let types_only = match &item.ty {
            ComponentItem::ComponentInstance(instance) => instance
                .exports(engine)
                .all(|(_, item)| matches!(item.ty, ComponentItem::Type(_))),
            _ => false,
        };
        if !provided && !types_only {
            let import = import.to_string();
            return Err(Error::new(name, ErrorKind::UnknownImport { import }));
        }
    }
    Ok(())
}

fn describe_item(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "a function",
        ComponentItem::CoreFunc(_) => "a core function",
        ComponentItem::Module(_) => "a core module",
        ComponentItem::Component(_) => "a component",
        ComponentItem::ComponentInstance(_) => "an instance",
        ComponentItem::Type(_) => "a type",
        ComponentItem::Resource(_) => "a resource",
    }
}

fn describe_func(func: &ComponentFunc) -> String {
    let params: Vec<String> = func
        .params()
        .map(|(name, ty)| format!("{name}: {}", describe(&ty)))
        .collect();
    let results: Vec<String> = func.results().map(|ty| describe(&ty)).collect();
    let mut text = format!("func({})", params.join(", "));
    if !results.is_empty() {
        text.push_str(" -> ");
        text.push_str(&results.join(", "));
    }
    text
}

/// Writes a component-model type in WIT syntax, structurally (type names are not part of a
/// component's type, so a variant is spelled out).
fn describe(ty: &Type) -> String {
    let opt = |ty: Option<Type>| ty.map(|t| describe(&t)).unwrap_or_else(|| "_".into());
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", describe(&list.ty())),
        Type::Option(option) => format!("option<{}>", describe(&option.ty())),
        Type::Result(result) => format!("result<{}, {}>", opt(result.ok()), opt(result.err())),
        Type::Tuple(tuple) => {
            let types: Vec<String> = tuple.types().map(|t| describe(&t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        Type::Record(record) => {
            let fields: Vec<String> = record
                .fields()
                .map(|f| format!("{}: {}", f.name, describe(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Variant(variant) => {
            let cases: Vec<String> = variant
                .cases()
                .map(|case| match case.ty {
                    Some(ty) => format!("{}({})", case.name, describe(&ty)),
                    None => case.name.to_string(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(en) => format!("enum {{ {} }}", en.names().collect::<Vec<_>>().join(", ")),
        Type::Flags(flags) => format!(
            "flags {{ {} }}",
            flags.names().collect::<Vec<_>>().join(", ")
        ),
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
        Type::Map(_) => "map".into(),
        Type::FixedLengthList(_) => "fixed-length-list".into(),
    }
}

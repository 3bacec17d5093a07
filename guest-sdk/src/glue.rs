//! The glue that `#[handler]` expands to, and the bindings it exports through.

pub use wit_bindgen;

#[allow(missing_docs)]
#[path = "bindings.rs"]
pub mod bindings;

pub use crate::messaging::log_args;
use crate::{HandlerError, Message};
use bindings::ComponentError;

/// The signature of a `#[handler]` function.
pub type MessageFn = fn(Message) -> Result<(), HandlerError>;
/// The signature of a `#[handler(request)]` function.
pub type RequestFn = fn(Message) -> Result<Vec<u8>, HandlerError>;
/// The signature of `handle_message` in a `#[handler]` impl.
pub type MessageMethod<T> = fn(&mut T, Message) -> Result<(), HandlerError>;
/// The signature of `handle_request` in a `#[handler]` impl.
pub type RequestMethod<T> = fn(&mut T, Message) -> Result<Vec<u8>, HandlerError>;

/// Runs a message handler on what the host passed and maps its error to the WIT one.
#[inline]
pub fn handle_message(
    handler: impl FnOnce(Message) -> Result<(), HandlerError>,
    sender: String,
    payload: Vec<u8>,
) -> Result<(), ComponentError> {
    handler(Message::new(sender, payload)).map_err(ComponentError::from)
}

/// Runs a request handler on what the host passed and maps its error to the WIT one.
#[inline]
pub fn handle_request(
    handler: impl FnOnce(Message) -> Result<Vec<u8>, HandlerError>,
    sender: String,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ComponentError> {
    handler(Message::new(sender, payload)).map_err(ComponentError::from)
}

/// The answer of a component that wrote no request handler.
pub fn no_request_handler(_request: Message) -> Result<Vec<u8>, HandlerError> {
    Err(HandlerError::unsupported(
        "this component does not answer requests",
    ))
}

/// Where a `#[handler]` impl keeps its value: empty until the first call creates it with
/// `Default`. wasm32-wasip2 guests are single-threaded, where a thread-local is a plain
/// static; on other targets it keeps the glue sound.
pub type StateCell<T> = std::cell::RefCell<Option<T>>;

/// Runs `handler` on the instance's state, creating the state with `init` on first use.
///
/// Uses the non-panicking `try_` accessors, so a handler that is somehow re-entered fails
/// with `internal` instead of trapping the instance, and the panic machinery stays out of
/// components that do not panic themselves.
#[inline]
pub fn with_state<T, R>(
    state: &'static std::thread::LocalKey<StateCell<T>>,
    init: fn() -> T,
    handler: impl FnOnce(&mut T) -> Result<R, HandlerError>,
) -> Result<R, HandlerError> {
    state
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => handler(slot.get_or_insert_with(init)),
            Err(_) => Err(HandlerError::internal(
                "the handler's state is in use: a handler was called while another was running",
            )),
        })
        .unwrap_or_else(|_| Err(HandlerError::internal("the handler's state is gone")))
}

/// The state of a `#[handler]` impl, as `Default` makes it. The one place the glue names
/// `Default`, so a type without it gets one error.
#[inline]
pub fn new_state<T: Default>() -> T {
    T::default()
}

/// What a module has when it holds no `#[handler]` function.
pub struct NoMessageHandler;

/// Names that `#[handler]` expansions glob-import into their module. An item of the same
/// name defined by another expansion in the module shadows the default here: this is how
/// a `#[handler]` function finds a `#[handler(request)]` function beside it, and how
/// `#[handler(request)]` checks that there is one.
#[allow(non_upper_case_globals)]
pub mod defaults {
    /// No `#[handler(request)]` function in this module: requests are unsupported.
    pub const only_one_courier_request_handler_per_component: super::RequestFn =
        super::no_request_handler;
    /// No `#[handler]` function in this module.
    pub const only_one_courier_handler_per_component: super::NoMessageHandler =
        super::NoMessageHandler;
}

/// Implemented by what a `#[handler]` function defines in its module, so that
/// `#[handler(request)]` can require one.
#[diagnostic::on_unimplemented(
    message = "`#[handler(request)]` needs a `#[handler]` function in the same module",
    label = "no `#[handler] fn(Message) -> Result<(), HandlerError>` in this module",
    note = "a component answers requests only beside its message handler: put both \
            functions in one module, or use a `#[handler]` impl with `handle_request`"
)]
pub trait MessageHandlerInModule {}

impl MessageHandlerInModule for MessageFn {}

/// Compiles only if `#[handler]` defined a message handler in the module.
pub const fn require_message_handler<T: MessageHandlerInModule>(_handler: &T) {}

/// The state of a `#[handler]` impl, seen by the `state` exports: the cell that holds it.
/// Which of `SavedWithSerde` (there with a codec feature on) and [`NotSaved`] applies is
/// chosen by method resolution on the concrete type (autoref specialisation): with a codec
/// feature on and a type that is `Serialize + DeserializeOwned`, the first; otherwise the
/// second.
pub struct StateOf<T: 'static>(pub &'static std::thread::LocalKey<StateCell<T>>);

/// A state that crosses upgrades: saved and loaded through serde, framed like a typed
/// payload (CBOR when the `cbor` feature is on, else JSON).
#[cfg(any(feature = "json", feature = "cbor"))]
pub trait SavedWithSerde {
    /// The state's bytes; empty while it has not been created.
    fn save_state(&self) -> Vec<u8>;
    /// Take over saved bytes; a state this type cannot decode is refused, never replaced
    /// by a default.
    fn load_state(&self, state: Vec<u8>) -> Result<(), ComponentError>;
}

#[cfg(any(feature = "json", feature = "cbor"))]
impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> SavedWithSerde for StateOf<T> {
    fn save_state(&self) -> Vec<u8> {
        #[cfg(feature = "cbor")]
        let codec = courier_codec::Codec::Cbor;
        #[cfg(not(feature = "cbor"))]
        let codec = courier_codec::Codec::Json;
        self.0.with(|cell| match &*cell.borrow() {
            None => Vec::new(),
            // A state serde cannot write is a bug of the component's, and `save-state`
            // (the published WIT) can only say so by trapping: the host then replaces the
            // instance with a fresh one of the same version, holding the last state it
            // saved, and fails the upgrade the save was for.
            Some(state) => courier_codec::encode(codec, state)
                .unwrap_or_else(|err| panic!("the state cannot be saved: {err}")),
        })
    }

    fn load_state(&self, state: Vec<u8>) -> Result<(), ComponentError> {
        if state.is_empty() {
            return Ok(());
        }
        let loaded: T = courier_codec::decode(&state).map_err(|err| {
            ComponentError::InvalidMessage(format!(
                "the saved state ({} bytes) cannot be read by this version: {err}",
                state.len()
            ))
        })?;
        self.0.with(|cell| *cell.borrow_mut() = Some(loaded));
        Ok(())
    }
}

/// A state that does not cross upgrades: a component whose state type is not serde's (or
/// built without a codec feature) saves nothing, and refuses saved bytes it cannot take, so
/// an upgrade from a version that kept state fails rather than silently dropping it.
pub trait NotSaved {
    /// Nothing.
    fn save_state(&self) -> Vec<u8>;
    /// Accepts no state; refuses any bytes.
    fn load_state(&self, state: Vec<u8>) -> Result<(), ComponentError>;
}

impl<T: 'static> NotSaved for &StateOf<T> {
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    fn load_state(&self, state: Vec<u8>) -> Result<(), ComponentError> {
        no_saved_state(state)
    }
}

/// The state of a `#[handler]` function: none.
pub struct NoState;

impl NotSaved for NoState {
    // Inlined into the export glue, which can then see that the empty `Vec` needs no
    // shrinking when it is handed over: a component with no state then has no allocation
    // that could fail, and so none of std's panic printing (see `no_saved_state`).
    #[inline(always)]
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    #[inline(always)]
    fn load_state(&self, state: Vec<u8>) -> Result<(), ComponentError> {
        no_saved_state(state)
    }
}

/// `load-state` of a component that keeps no state across upgrades: any state is refused
/// as `unsupported`, with no text. The host says what that means; building a text here would
/// allocate, and an allocation can fail with a panic, which pulls std's panic printing (and
/// with it WASI's stdio) into components that have none: `echo` would triple in size and
/// take three times as long to instantiate.
#[inline(always)]
pub fn no_saved_state(state: Vec<u8>) -> Result<(), ComponentError> {
    if state.is_empty() {
        Ok(())
    } else {
        Err(ComponentError::Unsupported(String::new()))
    }
}

/// The `state` exports of a `#[handler]` component, where the SDK targets world
/// `stateful-actor` (a codec feature on); nothing otherwise. The `#[handler]` expansion calls
/// it, since a proc macro cannot see the SDK's features. `$state` is the value whose
/// `save_state` and `load_state` serve them: [`NoState`] for a handler function, a
/// [`StateOf`] for an impl, whose methods come from [`SavedWithSerde`] or [`NotSaved`] as
/// method resolution picks.
#[cfg(any(feature = "json", feature = "cbor"))]
#[macro_export]
#[doc(hidden)]
macro_rules! __courier_state_exports {
    ($component:ident, $state:expr) => {
        impl ::courier_sdk::__private::bindings::exports::courier::actor::state::Guest
            for $component
        {
            fn save_state() -> ::std::vec::Vec<u8> {
                #[allow(unused_imports)]
                use ::courier_sdk::__private::{NotSaved as _, SavedWithSerde as _};
                ($state).save_state()
            }

            fn load_state(
                state: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<(), ::courier_sdk::__private::bindings::ComponentError>
            {
                #[allow(unused_imports)]
                use ::courier_sdk::__private::{NotSaved as _, SavedWithSerde as _};
                ($state).load_state(state)
            }
        }
    };
}

/// Nothing: without a codec the SDK targets world `actor`, which has no `state`.
#[cfg(not(any(feature = "json", feature = "cbor")))]
#[macro_export]
#[doc(hidden)]
macro_rules! __courier_state_exports {
    ($component:ident, $state:expr) => {};
}

pub use __courier_state_exports as state_exports;

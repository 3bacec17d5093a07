//! The `#[handler]` attribute of `courier-sdk`. Use it through `courier_sdk::handler` (or
//! `courier_sdk::prelude::*`); its documentation is there.
//!
//! The expansion writes the component's `handle-message` and `handle-request` exports
//! through the bindings that `courier-sdk` generates, so it names that crate as
//! `::courier_sdk`.
//!
//! How the pieces find each other, since an attribute sees only the item it is on:
//! - Every expansion that exports (a `#[handler]` function or impl) also defines a
//!   `#[macro_export]` macro named `only_one_courier_handler_per_component`. Exported macros
//!   all live at the crate root, wherever they are defined, so a second `#[handler]`
//!   anywhere in the crate fails with "the name `only_one_courier_handler_per_component` is
//!   defined multiple times", pointing at the second attribute and noting the first. No
//!   attribute can see another's expansion, so the rule is carried by the name.
//! - A `#[handler]` function and a `#[handler(request)]` function meet through their module:
//!   each defines a constant of a fixed name (the same rule-stating names) and glob-imports
//!   defaults for both names from the SDK. An item defined in a module shadows a glob import
//!   of the same name, so each side sees the other's constant if it is there and the SDK's
//!   default if not.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, ImplItem, Item, ItemFn, ItemImpl, PathArguments, ReturnType, Signature,
    Type,
};

/// Exports a message handler; see `courier_sdk::handler` for the forms it takes.
#[proc_macro_attribute]
pub fn handler(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    let item = TokenStream::from(item);
    match expand(attr.into(), item.clone()) {
        Ok(expanded) => expanded.into(),
        Err(err) => {
            // Keep the item itself, so code that uses it does not add errors of its own to the
            // one that matters.
            let mut out = item;
            out.extend(err.to_compile_error());
            out.into()
        }
    }
}

/// Which handler an attribute declares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `#[handler]`: handles messages, and maybe requests (an impl with `handle_request`).
    Message,
    /// `#[handler(request)]`: a function that answers requests.
    Request,
}

impl Kind {
    /// The signature a function of this kind named `name` must have, for error messages.
    fn function_signature(self, name: &syn::Ident) -> String {
        match self {
            Kind::Message => format!("fn {name}(msg: Message) -> Result<(), HandlerError>"),
            Kind::Request => format!("fn {name}(req: Message) -> Result<Vec<u8>, HandlerError>"),
        }
    }

    /// The signature a method of this kind must have, for error messages.
    fn method_signature(self) -> &'static str {
        match self {
            Kind::Message => {
                "fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError>"
            }
            Kind::Request => {
                "fn handle_request(&mut self, req: Message) -> Result<Vec<u8>, HandlerError>"
            }
        }
    }

    /// The `Ok` type of the handler's result, for error messages.
    fn ok_type(self) -> &'static str {
        match self {
            Kind::Message => "()",
            Kind::Request => "Vec<u8>",
        }
    }
}

fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let kind = parse_kind(attr)?;
    let item: Item = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`#[handler]` could not parse the item it is on: {e}"),
        )
    })?;
    match (item, kind) {
        (Item::Fn(function), Kind::Message) => expand_message_fn(function),
        (Item::Fn(function), Kind::Request) => expand_request_fn(function),
        (Item::Impl(block), Kind::Message) => expand_impl(block),
        (Item::Impl(_), Kind::Request) => Err(syn::Error::new(
            Span::call_site(),
            "`#[handler(request)]` goes on a function; in a `#[handler]` impl, answer requests \
             with a method `fn handle_request(&mut self, req: Message) -> Result<Vec<u8>, \
             HandlerError>` and put plain `#[handler]` on the impl",
        )),
        (other, _) => Err(syn::Error::new(
            other.span(),
            "`#[handler]` goes on a function `fn(Message) -> Result<(), HandlerError>` or on \
             an `impl` block of a `Default` type with a `handle_message` method",
        )),
    }
}

/// `#[handler]` or `#[handler(request)]`; anything else is an error on the arguments.
fn parse_kind(attr: TokenStream) -> syn::Result<Kind> {
    if attr.is_empty() {
        return Ok(Kind::Message);
    }
    match syn::parse2::<syn::Ident>(attr.clone()) {
        Ok(ident) if ident == "request" => Ok(Kind::Request),
        _ => Err(syn::Error::new_spanned(
            attr,
            "expected `#[handler]` for a message handler or `#[handler(request)]` for a \
             request handler",
        )),
    }
}

/// The crate-wide marker that makes a second `#[handler]` in a crate a compile error. Its
/// name is the error's subject, so it says what the rule is; its span is the attribute, so
/// the error points at both `#[handler]`s.
fn one_per_crate_marker() -> TokenStream {
    let name = syn::Ident::new("only_one_courier_handler_per_component", Span::call_site());
    quote! {
        #[doc(hidden)]
        #[macro_export]
        macro_rules! #name { () => {}; }
    }
}

/// The `Guest` implementations and `export!` call that turn two expressions into the
/// component's exports. `on_message` and `on_request` are closures
/// `|msg: Message| -> Result<_, HandlerError>`; `state` is the value whose `save_state` and
/// `load_state` serve world `stateful-actor`'s `state` interface, where the SDK targets it.
fn exports(on_message: TokenStream, on_request: TokenStream, state: TokenStream) -> TokenStream {
    quote! {
        struct __CourierComponent;

        ::courier_sdk::__private::state_exports!(__CourierComponent, #state);

        impl ::courier_sdk::__private::bindings::Guest for __CourierComponent {
            fn handle_message(
                sender: ::std::string::String,
                message: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<(), ::courier_sdk::__private::bindings::ComponentError> {
                ::courier_sdk::__private::handle_message(#on_message, sender, message)
            }

            fn handle_request(
                sender: ::std::string::String,
                request: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                ::courier_sdk::__private::bindings::ComponentError,
            > {
                ::courier_sdk::__private::handle_request(#on_request, sender, request)
            }
        }

        ::courier_sdk::__private::bindings::export!(
            __CourierComponent with_types_in ::courier_sdk::__private::bindings
        );
    }
}

fn expand_message_fn(function: ItemFn) -> syn::Result<TokenStream> {
    check_signature(&function.sig, Kind::Message, false)?;
    let name = &function.sig.ident;
    // The constant's type is the expected signature, so any mismatch the shape check let
    // through (a different `Message` type in scope, say) is reported at the function's name.
    let handler = quote_spanned! {name.span()=>
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const only_one_courier_handler_per_component: ::courier_sdk::__private::MessageFn = #name;
    };
    let exports = exports(
        quote!(only_one_courier_handler_per_component),
        quote!(only_one_courier_request_handler_per_component),
        // A handler function keeps no state of its own.
        quote!(::courier_sdk::__private::NoState),
    );
    let marker = one_per_crate_marker();
    Ok(quote! {
        #function
        #handler
        #[allow(unused_imports)]
        use ::courier_sdk::__private::defaults::*;
        const _: () = { #exports };
        #marker
    })
}

fn expand_request_fn(function: ItemFn) -> syn::Result<TokenStream> {
    check_signature(&function.sig, Kind::Request, false)?;
    let name = &function.sig.ident;
    let handler = quote_spanned! {name.span()=>
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const only_one_courier_request_handler_per_component: ::courier_sdk::__private::RequestFn = #name;
    };
    // Without a `#[handler]` function beside it, nothing would ever call this one.
    let require = quote_spanned! {Span::call_site()=>
        const _: () = ::courier_sdk::__private::require_message_handler(&only_one_courier_handler_per_component);
    };
    Ok(quote! {
        #function
        #handler
        #[allow(unused_imports)]
        use ::courier_sdk::__private::defaults::*;
        #require
    })
}

fn expand_impl(block: ItemImpl) -> syn::Result<TokenStream> {
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "`#[handler]` goes on an inherent impl (`impl MyState { ... }`), not on a trait \
             impl",
        ));
    }
    if let Some(unsafety) = &block.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "a `#[handler]` impl cannot be `unsafe`",
        ));
    }
    if !block.generics.params.is_empty() || block.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &block.generics,
            "a `#[handler]` impl cannot be generic: the component keeps one value of one \
             concrete type",
        ));
    }
    let self_ty = &block.self_ty;
    if !matches!(**self_ty, Type::Path(_)) {
        return Err(syn::Error::new_spanned(
            self_ty,
            "a `#[handler]` impl is for a named type that implements `Default`, such as \
             `impl Counter { ... }`",
        ));
    }

    let method = |name: &str| {
        block.items.iter().find_map(|item| match item {
            ImplItem::Fn(function) if function.sig.ident == name => Some(function),
            _ => None,
        })
    };
    let on_message = method("handle_message").ok_or_else(|| {
        syn::Error::new_spanned(
            self_ty,
            format!(
                "a `#[handler]` impl needs a method `{}`",
                Kind::Message.method_signature()
            ),
        )
    })?;
    let on_request = method("handle_request");

    let mut errors = check_signature(&on_message.sig, Kind::Message, true).err();
    if let Some(on_request) = on_request
        && let Err(err) = check_signature(&on_request.sig, Kind::Request, true)
    {
        match &mut errors {
            Some(errors) => errors.combine(err),
            None => errors = Some(err),
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    let message_name = &on_message.sig.ident;
    let message_method = quote_spanned! {message_name.span()=>
        const __COURIER_ON_MESSAGE: ::courier_sdk::__private::MessageMethod<#self_ty> =
            <#self_ty>::#message_name;
    };
    let (request_method, request_call) = match on_request {
        Some(on_request) => {
            let request_name = &on_request.sig.ident;
            (
                quote_spanned! {request_name.span()=>
                    const __COURIER_ON_REQUEST: ::courier_sdk::__private::RequestMethod<#self_ty> =
                        <#self_ty>::#request_name;
                },
                quote! {
                    |req| ::courier_sdk::__private::with_state(
                        &__COURIER_STATE,
                        __courier_new_state,
                        |state| __COURIER_ON_REQUEST(state, req),
                    )
                },
            )
        }
        None => (
            TokenStream::new(),
            quote!(::courier_sdk::__private::no_request_handler),
        ),
    };
    // The state is created on the first call, so a `Default` that allocates costs nothing
    // until the component is used.
    let new_state = quote_spanned! {self_ty.span()=>
        fn __courier_new_state() -> #self_ty {
            ::courier_sdk::__private::new_state::<#self_ty>()
        }
    };
    let exports = exports(
        quote! {
            |msg| ::courier_sdk::__private::with_state(
                &__COURIER_STATE,
                __courier_new_state,
                |state| __COURIER_ON_MESSAGE(state, msg),
            )
        },
        request_call,
        // Saved through serde when the type allows it, else not at all; method resolution
        // picks (see `courier_sdk::__private::StateOf`).
        quote!(&::courier_sdk::__private::StateOf(&__COURIER_STATE)),
    );
    let marker = one_per_crate_marker();
    Ok(quote! {
        #block
        const _: () = {
            #new_state
            #message_method
            #request_method
            ::std::thread_local! {
                static __COURIER_STATE: ::courier_sdk::__private::StateCell<#self_ty> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            #exports
        };
        #marker
    })
}

/// Checks the shape of a handler's signature, with an error at the first part that is wrong
/// saying what was expected. Types are checked by name (`Message`, `Result`, `HandlerError`);
/// the expansion then checks the real types by coercing the function to the expected
/// function-pointer type.
fn check_signature(sig: &Signature, kind: Kind, method: bool) -> syn::Result<()> {
    let expected = if method {
        kind.method_signature().to_owned()
    } else {
        kind.function_signature(&sig.ident)
    };
    let error = |span: Span, problem: &str| {
        syn::Error::new(span, format!("{problem}: expected `{expected}`"))
    };

    if let Some(asyncness) = &sig.asyncness {
        return Err(error(
            asyncness.span(),
            "a handler runs to completion within one call from the host, so it cannot be \
             `async`",
        ));
    }
    if let Some(constness) = &sig.constness {
        return Err(error(constness.span(), "a handler cannot be `const`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(error(unsafety.span(), "a handler cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(error(abi.span(), "a handler is a plain Rust function"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(error(sig.generics.span(), "a handler cannot be generic"));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(error(variadic.span(), "a handler cannot be variadic"));
    }

    let mut inputs = sig.inputs.iter();
    if method {
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some()
                    && receiver.mutability.is_some()
                    && receiver.colon_token.is_none() => {}
            Some(FnArg::Receiver(receiver)) => {
                return Err(error(
                    receiver.span(),
                    "the handler's state is borrowed mutably for each call, so the receiver \
                     is `&mut self`",
                ));
            }
            Some(FnArg::Typed(argument)) => {
                return Err(error(
                    argument.span(),
                    "a handler method takes `&mut self` first",
                ));
            }
            None => {
                return Err(error(
                    sig.paren_token.span.join(),
                    "a handler method takes `&mut self` and the message",
                ));
            }
        }
    }
    let rest: Vec<&FnArg> = inputs.collect();
    if rest.len() > 1 {
        let problem = if method {
            "a handler method takes one argument after `&mut self`, the message"
        } else {
            "a handler takes one argument, the message"
        };
        return Err(error(sig.paren_token.span.join(), problem));
    }
    match rest.first() {
        None => {
            return Err(error(
                sig.paren_token.span.join(),
                "a handler takes the message as its argument",
            ));
        }
        Some(FnArg::Receiver(receiver)) => {
            return Err(error(
                receiver.span(),
                "a `#[handler]` function takes no `self`; for state that lasts across \
                 messages, put `#[handler]` on an `impl` block",
            ));
        }
        Some(FnArg::Typed(argument)) => {
            if !is_named(&argument.ty, "Message") {
                return Err(error(
                    argument.ty.span(),
                    "a handler takes the message by value, as a `Message`",
                ));
            }
        }
    }

    let ok = kind.ok_type();
    match &sig.output {
        ReturnType::Default => Err(error(
            sig.paren_token.span.close(),
            &format!("a handler returns `Result<{ok}, HandlerError>`"),
        )),
        ReturnType::Type(_, ty) => {
            let ok_matches = |ty: &Type| match kind {
                Kind::Message => matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty()),
                Kind::Request => is_vec_of_bytes(ty),
            };
            match result_arguments(ty) {
                Some((ok_type, err_type))
                    if ok_matches(ok_type) && is_named(err_type, "HandlerError") =>
                {
                    Ok(())
                }
                _ => {
                    let problem = match kind {
                        Kind::Message => "a message handler returns `Result<(), HandlerError>`",
                        Kind::Request => {
                            "a request handler returns its reply as \
                             `Result<Vec<u8>, HandlerError>`"
                        }
                    };
                    Err(error(ty.span(), problem))
                }
            }
        }
    }
}

/// Whether `ty` is a path whose last segment is `name` with no generic arguments.
fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == name && last.arguments.is_none()),
        Type::Paren(inner) => is_named(&inner.elem, name),
        Type::Group(inner) => is_named(&inner.elem, name),
        _ => false,
    }
}

/// The generic arguments of `ty` if it is a path whose last segment is `name`.
fn generic_arguments<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a Type>> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    arguments
        .args
        .iter()
        .map(|argument| match argument {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect()
}

/// `(T, E)` if `ty` is `Result<T, E>`.
fn result_arguments(ty: &Type) -> Option<(&Type, &Type)> {
    match generic_arguments(ty, "Result")?.as_slice() {
        [ok, err] => Some((ok, err)),
        _ => None,
    }
}

/// Whether `ty` is `Vec<u8>`.
fn is_vec_of_bytes(ty: &Type) -> bool {
    matches!(
        generic_arguments(ty, "Vec").as_deref(),
        Some([element]) if is_named(element, "u8")
    )
}

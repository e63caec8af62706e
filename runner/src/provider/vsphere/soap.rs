//! vim25 SOAP envelopes and faults, and how faults and transport failures map onto [`Error`].

use std::fmt;

use reqwest::StatusCode;

use super::types::MoRef;
use super::xml::{self, Elem, Xml};
use crate::Error;

/// The SOAP 1.1 envelope namespace.
const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// Wraps a vim25 request in an envelope: `<method xmlns="urn:vim25"><_this .../>body</method>`.
/// The envelope binds `xsi` and `xsd`, so `xsi:type="xsd:string"` works anywhere in `body`.
pub fn envelope(method: &str, this: &MoRef, body: &str) -> String {
    let mut x = Xml::new();
    x.moref("_this", this).raw(body);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soapenv:Envelope xmlns:soapenv=\"{SOAPENV}\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"{}\">\
         <soapenv:Body><{method} xmlns=\"urn:vim25\">{}</{method}></soapenv:Body>\
         </soapenv:Envelope>",
        xml::XSI,
        x.finish()
    )
}

/// A vim25 fault: its type (`InvalidLogin`, `ManagedObjectNotFound`...), the server's message and
/// the fault's simple fields (`obj`, `privilegeId`, `name`...; morefs as `Kind:value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub name: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Fault {
    /// Reads a fault element (`<InvalidLoginFault xsi:type="InvalidLogin">` in a SOAP fault's
    /// detail, or the `fault` of a `LocalizedMethodFault`) with the message that came with it.
    pub fn from_elem(e: &Elem, message: &str) -> Fault {
        let name = e
            .xsi_type
            .clone()
            .unwrap_or_else(|| e.name.trim_end_matches("Fault").to_string());
        let fields = e
            .children
            .iter()
            .filter(|c| c.children.is_empty() && !c.text.trim().is_empty())
            .map(|c| {
                let v = c
                    .as_moref()
                    .map_or_else(|| c.text.trim().into(), |m| m.to_string());
                (c.name.clone(), v)
            })
            .collect();
        let mut message = message.trim().to_string();
        if message.is_empty() {
            // some faults carry their text in faultMessage[].message only
            message = e.string_at("faultMessage/message");
        }
        Fault {
            name,
            message,
            fields,
        }
    }

    /// Reads a `LocalizedMethodFault` (`<error><fault xsi:type=...>...</fault><localizedMessage>`).
    pub fn from_localized(e: &Elem) -> Fault {
        let message = e.text_at("localizedMessage").unwrap_or_default();
        match e.child("fault") {
            Some(f) => Fault::from_elem(f, message),
            None => Fault {
                name: "UnknownFault".into(),
                message: message.to_string(),
                fields: Vec::new(),
            },
        }
    }

    /// A field of the fault.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Maps the fault onto the runner's error: `system` names the server, `context` the call and
    /// the object it was made on.
    pub fn into_error(self, system: &str, context: &str) -> Error {
        let auth = |detail: String| Error::Auth {
            system: system.to_string(),
            detail,
        };
        match self.name.as_str() {
            "InvalidLogin" => auth(format!(
                "{context}: login refused ({self}); check the username and password"
            )),
            "NotAuthenticated" => auth(format!(
                "{context}: the session is not logged in or has expired ({self})"
            )),
            "NoPermission" => auth(format!(
                "{context}: privilege {} missing on {} ({self})",
                self.field("privilegeId").unwrap_or("?"),
                self.field("object").unwrap_or("?"),
            )),
            "ManagedObjectNotFound" => Error::NotFound {
                what: format!("{system} object {}", self.field("obj").unwrap_or("?")),
                detail: format!("{context}: {self}"),
            },
            "FileNotFound" => Error::NotFound {
                what: format!("{system} file {}", self.field("file").unwrap_or("?")),
                detail: format!("{context}: {self}"),
            },
            "NotFound" => Error::NotFound {
                what: format!("{system} object"),
                detail: format!("{context}: {self}"),
            },
            "NoDiskSpace" | "OutOfDiskSpace" => {
                Error::NoSpace(format!("{system}: {context}: {self}"))
            }
            name if is_transient(name) => Error::transient(system, format!("{context}: {self}")),
            _ => Error::Invalid(format!("{system}: {context}: {self}")),
        }
    }
}

/// Faults another attempt can get past: the object is busy or a host is briefly unreachable.
fn is_transient(name: &str) -> bool {
    matches!(
        name,
        "TaskInProgress"
            | "ConcurrentAccess"
            | "HostCommunication"
            | "HostNotConnected"
            | "HostNotReachable"
            | "NetworkDisruptedAndConfigRolledBack"
            | "Timedout"
    )
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if !self.fields.is_empty() {
            let fields: Vec<String> = self
                .fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, " [{}]", fields.join(", "))?;
        }
        Ok(())
    }
}

/// A parsed SOAP reply: the `<MethodResponse>` element or a fault.
#[derive(Debug)]
pub enum Reply {
    Ok(Elem),
    Fault(Fault),
}

/// Parses a SOAP response body.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("malformed XML: {e}"))?;
    let body = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name((SOAPENV, "Body")))
        .ok_or("no SOAP Body in the response")?;
    let first = body
        .children()
        .find(|n| n.is_element())
        .ok_or("empty SOAP Body")?;
    if !first.has_tag_name((SOAPENV, "Fault")) {
        return Ok(Reply::Ok(Elem::from_node(first)));
    }
    let fault = Elem::from_node(first);
    let message = fault.text_at("faultstring").unwrap_or_default();
    Ok(Reply::Fault(
        match fault.child("detail").and_then(|d| d.children.first()) {
            Some(detail) => Fault::from_elem(detail, message),
            None => Fault {
                name: fault.string_at("faultcode"),
                message: message.to_string(),
                fields: Vec::new(),
            },
        },
    ))
}

/// Classifies a non-success HTTP status of `what` (a SOAP call, a datastore or NFC transfer).
pub fn status_error(system: &str, what: &str, status: StatusCode) -> Error {
    let detail = format!("{what}: HTTP {status}");
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Auth {
            system: system.to_string(),
            detail: format!("{detail}; the session is not logged in or lacks the privilege"),
        },
        StatusCode::NOT_FOUND => Error::NotFound {
            what: format!("{system} resource"),
            detail,
        },
        StatusCode::INSUFFICIENT_STORAGE => Error::NoSpace(format!("{system}: {detail}")),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Error::transient(system, detail)
        }
        s if s.is_server_error()
            && s != StatusCode::NOT_IMPLEMENTED
            && s != StatusCode::HTTP_VERSION_NOT_SUPPORTED =>
        {
            Error::transient(system, detail)
        }
        _ => Error::Invalid(format!("{system}: {detail}")),
    }
}

/// Classifies a transport failure: an untrusted certificate is terminal (it will not fix itself),
/// anything else (refused, reset, timed out, truncated) is transient.
pub fn transport_error(system: &str, what: &str, e: &reqwest::Error) -> Error {
    let chain = error_chain(e);
    if e.is_builder() {
        return Error::Invalid(format!("{system}: {what}: {chain}"));
    }
    if chain.contains("invalid peer certificate") || chain.contains("certificate verify") {
        return Error::Invalid(format!(
            "{system}: {what}: TLS certificate not trusted ({chain}); give the CA that signed it \
             (ca.crt) or set insecureSkipVerify"
        ));
    }
    Error::transient(system, format!("{what}: {chain}"))
}

/// An error and its sources, `: `-separated (reqwest's own message hides the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "vSphere https://vc.example/sdk";

    fn fault_reply(detail: &str, message: &str) -> Fault {
        let text = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>
<faultcode>ServerFaultCode</faultcode><faultstring>{message}</faultstring><detail>{detail}</detail>
</soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
        );
        match parse_reply(&text).unwrap() {
            Reply::Fault(f) => f,
            Reply::Ok(e) => panic!("not a fault: {e:?}"),
        }
    }

    #[test]
    fn envelope_wraps_method_and_this() {
        let e = envelope(
            "FindByInventoryPath",
            &MoRef::new("SearchIndex", "SearchIndex"),
            "<inventoryPath>DC0/vm/a&amp;b</inventoryPath>",
        );
        let doc = roxmltree::Document::parse(&e).unwrap();
        let method = doc
            .descendants()
            .find(|n| n.has_tag_name(("urn:vim25", "FindByInventoryPath")))
            .unwrap();
        let this = method.first_element_child().unwrap();
        assert_eq!(this.tag_name().name(), "_this");
        assert_eq!(this.attribute("type"), Some("SearchIndex"));
        assert_eq!(
            method.last_element_child().unwrap().text(),
            Some("DC0/vm/a&b")
        );
    }

    #[test]
    fn reads_a_response_element() {
        let text = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Body><FindByInventoryPathResponse xmlns="urn:vim25"><returnval type="VirtualMachine">vm-62</returnval>
</FindByInventoryPathResponse></soapenv:Body></soapenv:Envelope>"#;
        let Reply::Ok(e) = parse_reply(text).unwrap() else {
            panic!("fault")
        };
        assert_eq!(e.name, "FindByInventoryPathResponse");
        assert_eq!(
            e.moref_at("returnval"),
            Some(MoRef::new("VirtualMachine", "vm-62"))
        );
        assert!(parse_reply("<html>502</html>").is_err());
    }

    #[test]
    fn invalid_login_is_auth_without_secrets() {
        let f = fault_reply(
            r#"<InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault>"#,
            "Login failure",
        );
        assert_eq!(f.name, "InvalidLogin");
        let e = f.into_error(SYSTEM, "Login");
        assert!(matches!(e, Error::Auth { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "vSphere https://vc.example/sdk authentication failed: Login: login refused \
             (InvalidLogin: Login failure); check the username and password"
        );
    }

    #[test]
    fn not_authenticated_and_no_permission_are_auth_naming_the_object() {
        let f = fault_reply(
            r#"<NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated"><object type="SearchIndex">SearchIndex</object><privilegeId>System.View</privilegeId></NotAuthenticatedFault>"#,
            "",
        );
        let e = f.into_error(SYSTEM, "FindByInventoryPath on SearchIndex:SearchIndex");
        assert!(matches!(e, Error::Auth { .. }));
        assert!(
            e.to_string().contains("object=SearchIndex:SearchIndex"),
            "{e}"
        );

        let f = fault_reply(
            r#"<NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><object type="Folder">group-v3</object><privilegeId>VirtualMachine.Inventory.Create</privilegeId></NoPermissionFault>"#,
            "Permission to perform this operation was denied.",
        );
        let e = f.into_error(SYSTEM, "CreateVM_Task on Folder:group-v3");
        assert!(matches!(e, Error::Auth { .. }));
        assert!(!e.is_retryable());
        assert!(
            e.to_string()
                .contains("privilege VirtualMachine.Inventory.Create missing on Folder:group-v3"),
            "{e}"
        );
    }

    #[test]
    fn not_found_names_the_object() {
        let f = fault_reply(
            r#"<ManagedObjectNotFoundFault xmlns="urn:vim25" xsi:type="ManagedObjectNotFound"><obj type="VirtualMachine">vm-999</obj></ManagedObjectNotFoundFault>"#,
            "",
        );
        let e = f.into_error(SYSTEM, "RetrievePropertiesEx");
        let Error::NotFound { what, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            what,
            "vSphere https://vc.example/sdk object VirtualMachine:vm-999"
        );
    }

    #[test]
    fn busy_objects_are_transient_and_clashes_invalid() {
        let f = fault_reply(
            r#"<TaskInProgressFault xmlns="urn:vim25" xsi:type="TaskInProgress"><task type="Task">task-9</task></TaskInProgressFault>"#,
            "The operation is not allowed in the current state.",
        );
        assert!(f.into_error(SYSTEM, "PowerOnVM_Task").is_retryable());

        let f = fault_reply(
            r#"<DuplicateNameFault xmlns="urn:vim25" xsi:type="DuplicateName"><name>vm1</name><object type="Folder">group-v3</object></DuplicateNameFault>"#,
            "The name 'vm1' already exists.",
        );
        let e = f.into_error(SYSTEM, "CreateVM_Task on Folder:group-v3");
        assert!(matches!(e, Error::Invalid(_)));
        assert_eq!(
            e.to_string(),
            "vSphere https://vc.example/sdk: CreateVM_Task on Folder:group-v3: DuplicateName: \
             The name 'vm1' already exists. [name=vm1, object=Folder:group-v3]"
        );
    }

    #[test]
    fn localized_method_fault_of_a_task() {
        let e = xml::parse(
            r#"<error xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><fault xsi:type="InvalidArgument"><invalidProperty>spec.name</invalidProperty></fault><localizedMessage>A specified parameter was not correct: spec.name</localizedMessage></error>"#,
        )
        .unwrap();
        let f = Fault::from_localized(&e);
        assert_eq!(f.name, "InvalidArgument");
        assert_eq!(f.field("invalidProperty"), Some("spec.name"));
        assert_eq!(
            f.message,
            "A specified parameter was not correct: spec.name"
        );
    }

    #[test]
    fn http_statuses() {
        assert!(status_error(SYSTEM, "POST", StatusCode::SERVICE_UNAVAILABLE).is_retryable());
        assert!(matches!(
            status_error(SYSTEM, "GET x", StatusCode::NOT_FOUND),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            status_error(SYSTEM, "GET x", StatusCode::UNAUTHORIZED),
            Error::Auth { .. }
        ));
        assert!(!status_error(SYSTEM, "GET x", StatusCode::BAD_REQUEST).is_retryable());
    }
}

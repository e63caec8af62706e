//! The little XML the vim25 client needs: a writer that escapes every text and attribute value, and
//! an owned element tree ([`Elem`]) built from roxmltree so parsed responses can be passed around
//! without borrowing the response text.

use std::fmt::Write as _;

use super::types::MoRef;

/// The XML Schema instance namespace (`xsi:type`).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The XML Schema namespace (`xsd:string` values).
pub const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// Escapes `s` for text content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry other control characters at all
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "\u{FFFD}");
            }
            c => out.push(c),
        }
    }
    out
}

/// An XML writer: elements are opened and closed explicitly, every value is escaped.
#[derive(Default)]
pub struct Xml {
    buf: String,
}

impl Xml {
    /// An empty document fragment.
    pub fn new() -> Self {
        Xml::default()
    }

    /// `<name>`.
    pub fn open(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.buf, "<{name}>");
        self
    }

    /// `<name xsi:type="kind">`.
    pub fn open_typed(&mut self, name: &str, kind: &str) -> &mut Self {
        let _ = write!(self.buf, "<{name} xsi:type=\"{}\">", escape(kind));
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.buf, "</{name}>");
        self
    }

    /// `<name>value</name>`.
    pub fn text(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.buf, "<{name}>{}</{name}>", escape(&value.to_string()));
        self
    }

    /// `<name>value</name>` when `value` is set.
    pub fn opt<T: std::fmt::Display>(&mut self, name: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.text(name, v);
        }
        self
    }

    /// `<name xsi:type="kind">value</name>` (e.g. an `xsd:string` option value).
    pub fn typed_text(&mut self, name: &str, kind: &str, value: &str) -> &mut Self {
        self.open_typed(name, kind);
        self.buf.push_str(&escape(value));
        self.close(name)
    }

    /// `<name type="Kind">value</name>`: a managed object reference.
    pub fn moref(&mut self, name: &str, r: &MoRef) -> &mut Self {
        let _ = write!(
            self.buf,
            "<{name} type=\"{}\">{}</{name}>",
            escape(&r.kind),
            escape(&r.value)
        );
        self
    }

    /// Appends markup that is already well-formed XML (a fragment the server returned).
    pub fn raw(&mut self, markup: &str) -> &mut Self {
        self.buf.push_str(markup);
        self
    }

    /// The markup written so far.
    pub fn finish(self) -> String {
        self.buf
    }
}

/// An element of a parsed response: local name, `xsi:type`, plain attributes, text and children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elem {
    /// Local name (namespace prefix dropped).
    pub name: String,
    /// The `xsi:type` attribute, whatever prefix the server bound the namespace to.
    pub xsi_type: Option<String>,
    /// Attributes without a namespace (`type` of a moref).
    pub attrs: Vec<(String, String)>,
    /// Concatenated text of the element's direct text nodes.
    pub text: String,
    pub children: Vec<Elem>,
}

impl Elem {
    /// Copies a roxmltree element (and its subtree) into an owned tree.
    pub fn from_node(node: roxmltree::Node<'_, '_>) -> Elem {
        let mut elem = Elem {
            name: node.tag_name().name().to_string(),
            xsi_type: node.attribute((XSI, "type")).map(str::to_string),
            ..Elem::default()
        };
        for a in node.attributes() {
            if a.namespace().is_none() {
                elem.attrs
                    .push((a.name().to_string(), a.value().to_string()));
            }
        }
        for child in node.children() {
            if child.is_element() {
                elem.children.push(Elem::from_node(child));
            } else if let Some(t) = child.text().filter(|_| child.is_text()) {
                elem.text.push_str(t);
            }
        }
        elem
    }

    /// A plain attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`, in document order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Elem> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The child at a `/`-separated path of names (`backing/fileName`).
    pub fn at(&self, path: &str) -> Option<&Elem> {
        path.split('/').try_fold(self, |e, name| e.child(name))
    }

    /// Text of the child at `path`, trimmed.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path).map(|e| e.text.trim())
    }

    /// Text of the child at `path` parsed as a number (or bool, ...).
    pub fn parse_at<T: std::str::FromStr>(&self, path: &str) -> Option<T> {
        self.text_at(path)?.parse().ok()
    }

    /// Text of `path` as an owned string, empty when absent.
    pub fn string_at(&self, path: &str) -> String {
        self.text_at(path).unwrap_or_default().to_string()
    }

    /// This element read as a managed object reference (`<x type="Kind">value</x>`).
    pub fn as_moref(&self) -> Option<MoRef> {
        let kind = self.attr("type")?;
        Some(MoRef::new(kind, self.text.trim()))
    }

    /// The moref at `path`.
    pub fn moref_at(&self, path: &str) -> Option<MoRef> {
        self.at(path)?.as_moref()
    }
}

/// Parses `text` and returns its root element as an [`Elem`].
pub fn parse(text: &str) -> Result<Elem, roxmltree::Error> {
    let doc = roxmltree::Document::parse(text)?;
    Ok(Elem::from_node(doc.root_element()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(escape("tab\tnl\nbell\u{7}"), "tab\tnl\nbell\u{FFFD}");
    }

    #[test]
    fn writes_nested_elements_escaped() {
        let mut x = Xml::new();
        x.moref("_this", &MoRef::new("VirtualMachine", "vm-1"))
            .open("spec")
            .text("name", "a&b")
            .opt("annotation", None::<&str>)
            .opt("numCPUs", Some(2))
            .typed_text("value", "xsd:string", "<x>")
            .close("spec");
        assert_eq!(
            x.finish(),
            "<_this type=\"VirtualMachine\">vm-1</_this><spec><name>a&amp;b</name>\
             <numCPUs>2</numCPUs><value xsi:type=\"xsd:string\">&lt;x&gt;</value></spec>"
        );
    }

    #[test]
    fn reads_xsi_type_under_any_prefix() {
        let e = parse(
            r#"<val xmlns="urn:vim25" xmlns:_XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"
                 _XMLSchema-instance:type="VirtualMachineConfigInfo"><name> vm &amp; co </name>
                 <datastore type="Datastore">datastore-1</datastore></val>"#,
        )
        .unwrap();
        assert_eq!(e.xsi_type.as_deref(), Some("VirtualMachineConfigInfo"));
        assert_eq!(e.text_at("name"), Some("vm & co"));
        assert_eq!(
            e.moref_at("datastore"),
            Some(MoRef::new("Datastore", "datastore-1"))
        );
        assert!(e.attr("type").is_none());
    }
}

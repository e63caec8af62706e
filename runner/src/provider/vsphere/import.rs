//! OvfManager.CreateImportSpec and the import spec it returns. The spec is kept as the XML the
//! server sent (every `xsi:type` intact) and sent back unchanged inside ImportVApp; the few
//! elements a migration adds are inserted into its `configSpec` in XSD order.

use std::ops::Range;

use super::Client;
use super::client::unexpected;
use super::soap::Fault;
use super::spec::{config_spec_rank, write_option_value};
use super::types::{FileItem, Firmware, MoRef};
use super::xml::{self, Elem, Xml, escape};
use crate::{Error, Result};

/// What `CreateImportSpec` needs besides the descriptor.
#[derive(Clone, Debug, Default)]
pub struct ImportParams {
    /// Name of the VM to create.
    pub entity_name: String,
    /// `(network name in the OVF, network moref to connect it to)`.
    pub network_mapping: Vec<(String, MoRef)>,
    /// `thin`, `thick`, `eagerZeroedThick`...; the server's default when `None`.
    pub disk_provisioning: Option<String>,
}

/// An import spec as the server returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSpec {
    /// `xsi:type` of the spec (`VirtualMachineImportSpec`).
    pub spec_type: String,
    /// Namespace declarations in scope where the server wrote the spec (`(prefix, uri)`; no
    /// prefix for the default namespace), repeated on the element sent back.
    namespaces: Vec<(Option<String>, String)>,
    /// The spec's content, byte for byte as the server sent it (or with
    /// [`ImportSpec::with_config`] insertions).
    inner: String,
    /// The files the server expects, by device id.
    pub file_items: Vec<FileItem>,
    /// Warnings the server returned with the spec.
    pub warnings: Vec<String>,
}

impl ImportSpec {
    /// The spec's content as it will be sent.
    pub fn xml(&self) -> &str {
        &self.inner
    }

    /// Writes `<elem xsi:type="...">content</elem>` with the server's namespace declarations (and
    /// `xsi`/`xsd`, which inserted elements use, when the server bound other prefixes).
    pub fn write(&self, elem: &str, x: &mut Xml) {
        let mut open = format!("<{elem}");
        let mut declared = Vec::new();
        for (prefix, uri) in &self.namespaces {
            match prefix {
                Some(p) => open.push_str(&format!(" xmlns:{p}=\"{}\"", escape(uri))),
                None => open.push_str(&format!(" xmlns=\"{}\"", escape(uri))),
            }
            declared.push(prefix.as_deref());
        }
        for (prefix, uri) in [("xsi", xml::XSI), ("xsd", xml::XSD)] {
            if !declared.contains(&Some(prefix)) {
                open.push_str(&format!(" xmlns:{prefix}=\"{uri}\""));
            }
        }
        open.push_str(&format!(" xsi:type=\"{}\">", escape(&self.spec_type)));
        x.raw(&open).raw(&self.inner).close(elem);
    }

    /// The spec with `annotation`, `extra_config` keys and `firmware` set in its `configSpec`:
    /// inserted where vim25's XSD sequence puts them, or replacing an element already there (an
    /// extraConfig entry with the same key, the annotation, the firmware), never duplicated.
    pub fn with_config(
        &self,
        annotation: Option<&str>,
        extra_config: &[(&str, &str)],
        firmware: Option<Firmware>,
    ) -> Result<ImportSpec> {
        let wrapper_open = self.wrapper_open();
        let doc_text = format!("{wrapper_open}{}</w>", self.inner);
        let doc = roxmltree::Document::parse(&doc_text)
            .map_err(|e| Error::Invalid(format!("import spec is not XML: {e}")))?;
        let config = doc
            .root_element()
            .children()
            .find(|n| n.tag_name().name() == "configSpec")
            .ok_or_else(|| Error::Invalid("import spec has no configSpec".into()))?;
        let mut edits = Edits::new(config, &doc_text)?;
        if let Some(a) = annotation {
            edits.set_single(
                "annotation",
                format!("<annotation>{}</annotation>", escape(a)),
            );
        }
        for (i, (k, v)) in extra_config.iter().enumerate() {
            // a key given twice: the last value wins
            if extra_config[i + 1..].iter().any(|(k2, _)| k2 == k) {
                continue;
            }
            edits.set_extra_config(k, v);
        }
        if let Some(f) = firmware {
            edits.set_single("firmware", format!("<firmware>{}</firmware>", f.as_str()));
        }
        let text = edits.apply(&doc_text);
        let inner = text[wrapper_open.len()..text.len() - "</w>".len()].to_string();
        Ok(ImportSpec {
            inner,
            ..self.clone()
        })
    }

    fn wrapper_open(&self) -> String {
        let mut x = Xml::new();
        self.write("w", &mut x);
        let mut open = x.finish();
        open.truncate(open.len() - self.inner.len() - "</w>".len());
        open
    }
}

/// Text edits on a `configSpec` element: replacements of child ranges and insertions.
struct Edits {
    /// `(local name, byte range, extraConfig key)` of each child element.
    children: Vec<(String, Range<usize>, Option<String>)>,
    /// Where content appended at the end of the element goes (before its end tag).
    end: usize,
    /// `(range replaced, new text, order of the edit)`; insertions have empty ranges.
    edits: Vec<(Range<usize>, String, usize)>,
}

impl Edits {
    fn new(config: roxmltree::Node<'_, '_>, text: &str) -> Result<Edits> {
        let range = config.range();
        let elem = &text[range.clone()];
        if elem.ends_with("/>") {
            return Err(Error::Invalid("import spec has an empty configSpec".into()));
        }
        let end = range.start + elem.rfind("</").unwrap_or(elem.len());
        let children = config
            .children()
            .filter(|n| n.is_element())
            .map(|n| {
                let key = (n.tag_name().name() == "extraConfig")
                    .then(|| {
                        n.children()
                            .find(|c| c.tag_name().name() == "key")
                            .and_then(|c| c.text())
                            .map(|t| t.trim().to_string())
                    })
                    .flatten();
                (n.tag_name().name().to_string(), n.range(), key)
            })
            .collect();
        Ok(Edits {
            children,
            end,
            edits: Vec::new(),
        })
    }

    /// Where a new `name` element goes: before the first child that the XSD puts after it.
    fn insertion_point(&self, name: &str) -> usize {
        let rank = config_spec_rank(name);
        self.children
            .iter()
            .find(|(n, _, _)| config_spec_rank(n) > rank)
            .map_or(self.end, |(_, r, _)| r.start)
    }

    fn push(&mut self, range: Range<usize>, text: String) {
        let order = self.edits.len();
        self.edits.push((range, text, order));
    }

    /// Replaces element `name`, or inserts it in order.
    fn set_single(&mut self, name: &str, markup: String) {
        match self.children.iter().find(|(n, _, _)| n == name) {
            Some((_, r, _)) => {
                let r = r.clone();
                self.push(r, markup);
            }
            None => {
                let at = self.insertion_point(name);
                self.push(at..at, markup);
            }
        }
    }

    /// Replaces the extraConfig entry of `key`, or adds one after the last entry (or in order).
    fn set_extra_config(&mut self, key: &str, value: &str) {
        let mut x = Xml::new();
        write_option_value(&mut x, key, value);
        let markup = x.finish();
        let same = self
            .children
            .iter()
            .find(|(_, _, k)| k.as_deref() == Some(key))
            .map(|(_, r, _)| r.clone());
        if let Some(r) = same {
            return self.push(r, markup);
        }
        let last = self
            .children
            .iter()
            .rev()
            .find(|(n, _, _)| n == "extraConfig")
            .map(|(_, r, _)| r.end);
        let at = last.unwrap_or_else(|| self.insertion_point("extraConfig"));
        self.push(at..at, markup);
    }

    /// The text with every edit applied (insertions at one point keep the order they were made).
    fn apply(mut self, text: &str) -> String {
        self.edits.sort_by_key(|(r, _, order)| (r.start, *order));
        let mut out = String::with_capacity(text.len() + 256);
        let mut at = 0;
        for (r, new, _) in &self.edits {
            out.push_str(&text[at..r.start]);
            out.push_str(new);
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

impl Client {
    /// Turns an OVF descriptor into an import spec for `pool` and `datastore`. Errors the server
    /// finds in the descriptor become one [`Error::Invalid`] listing them; warnings are returned.
    pub async fn create_import_spec(
        &self,
        ovf_descriptor: &str,
        pool: &MoRef,
        datastore: &MoRef,
        params: &ImportParams,
    ) -> Result<ImportSpec> {
        let mut x = Xml::new();
        x.text("ovfDescriptor", ovf_descriptor)
            .moref("resourcePool", pool)
            .moref("datastore", datastore)
            .open("cisp")
            .text("locale", "")
            .text("deploymentOption", "")
            .text("entityName", &params.entity_name);
        for (name, network) in &params.network_mapping {
            x.open("networkMapping")
                .text("name", name)
                .moref("network", network)
                .close("networkMapping");
        }
        x.opt("diskProvisioning", params.disk_provisioning.as_deref())
            .close("cisp");
        let ovf = &self.content.ovf_manager;
        let text = self.call_text("CreateImportSpec", ovf, x).await?;
        let context = format!("CreateImportSpec for {:?}", params.entity_name);
        parse_import_spec(&text).map_err(|why| match why {
            SpecError::Server(faults) => Error::Invalid(format!(
                "{}: {context}: the OVF descriptor was refused: {}",
                self.system,
                faults.join("; ")
            )),
            SpecError::Malformed(what) => unexpected(&self.system, &context, &what),
        })
    }
}

/// Why no import spec came back.
#[derive(Debug)]
enum SpecError {
    /// The server's `error` list.
    Server(Vec<String>),
    /// The reply lacks what it should have.
    Malformed(String),
}

/// Reads a `CreateImportSpecResponse`: the spec verbatim, its file items, warnings and errors.
fn parse_import_spec(text: &str) -> Result<ImportSpec, SpecError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| SpecError::Malformed(e.to_string()))?;
    let rv = doc
        .descendants()
        .find(|n| n.tag_name().name() == "returnval")
        .ok_or_else(|| SpecError::Malformed("no returnval".into()))?;
    let result = Elem::from_node(rv);
    let errors: Vec<String> = result
        .all("error")
        .map(|e| Fault::from_localized(e).to_string())
        .collect();
    if !errors.is_empty() {
        return Err(SpecError::Server(errors));
    }
    let spec = rv
        .children()
        .find(|n| n.tag_name().name() == "importSpec")
        .ok_or_else(|| SpecError::Malformed("no importSpec and no error".into()))?;
    let spec_type = spec
        .attribute((xml::XSI, "type"))
        .ok_or_else(|| SpecError::Malformed("importSpec without xsi:type".into()))?;
    Ok(ImportSpec {
        spec_type: spec_type.to_string(),
        namespaces: spec
            .namespaces()
            .map(|ns| (ns.name().map(str::to_string), ns.uri().to_string()))
            .collect(),
        inner: inner_text(spec, text).to_string(),
        file_items: result.all("fileItem").map(file_item).collect(),
        warnings: result
            .all("warning")
            .map(|w| Fault::from_localized(w).to_string())
            .collect(),
    })
}

/// The source text between an element's start and end tags.
fn inner_text<'a>(node: roxmltree::Node<'_, '_>, text: &'a str) -> &'a str {
    match (node.first_child(), node.last_child()) {
        (Some(first), Some(last)) => &text[first.range().start..last.range().end],
        _ => "",
    }
}

fn file_item(e: &Elem) -> FileItem {
    FileItem {
        device_id: e.string_at("deviceId"),
        path: e.string_at("path"),
        size: e.parse_at("size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CreateImportSpec response shaped like vCenter's (xsi bound as vcsim binds it).
    const RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><soapenv:Body><CreateImportSpecResponse xmlns="urn:vim25"><returnval><importSpec xmlns:_XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" _XMLSchema-instance:type="VirtualMachineImportSpec"><configSpec><name>vm1</name><version>vmx-13</version><guestId>otherGuest</guestId><files><vmPathName>[LocalDS_0]</vmPathName></files><numCPUs>2</numCPUs><memoryMB>1024</memoryMB><deviceChange><operation>add</operation><device _XMLSchema-instance:type="VirtualLsiLogicController"><key>-1</key><busNumber>0</busNumber></device></deviceChange><extraConfig><key>existing</key><value _XMLSchema-instance:type="xsd:string">old</value></extraConfig><vAppConfig _XMLSchema-instance:type="VAppConfigSpec"></vAppConfig></configSpec><resPoolEntity type="ResourcePool">resgroup-1</resPoolEntity></importSpec><fileItem><deviceId>/vm1/disk:0</deviceId><path>disk.vmdk</path><size>1024</size></fileItem><warning><fault _XMLSchema-instance:type="OvfUnknownEntity" xmlns:_XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"><lineNumber>3</lineNumber></fault><localizedMessage>unknown element</localizedMessage></warning></returnval></CreateImportSpecResponse></soapenv:Body></soapenv:Envelope>"#;

    fn config_children(spec: &ImportSpec) -> Vec<(String, String)> {
        let mut x = Xml::new();
        x.raw("<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">");
        spec.write("spec", &mut x);
        x.raw("</r>");
        let r = xml::parse(&x.finish()).unwrap();
        let spec = &r.children[0];
        assert_eq!(spec.xsi_type.as_deref(), Some("VirtualMachineImportSpec"));
        spec.child("configSpec")
            .unwrap()
            .children
            .iter()
            .map(|c| {
                let detail = match c.name.as_str() {
                    "extraConfig" => format!("{}={}", c.string_at("key"), c.string_at("value")),
                    "annotation" | "firmware" => c.text.clone(),
                    _ => String::new(),
                };
                (c.name.clone(), detail)
            })
            .collect()
    }

    #[test]
    fn the_spec_is_kept_verbatim() {
        let spec = parse_import_spec(RESPONSE).unwrap();
        assert_eq!(spec.spec_type, "VirtualMachineImportSpec");
        assert!(spec.xml().starts_with("<configSpec><name>vm1</name>"));
        assert!(
            spec.xml()
                .ends_with("<resPoolEntity type=\"ResourcePool\">resgroup-1</resPoolEntity>")
        );
        assert!(
            spec.xml()
                .contains("_XMLSchema-instance:type=\"VirtualLsiLogicController\"")
        );
        assert_eq!(
            spec.file_items,
            [FileItem {
                device_id: "/vm1/disk:0".into(),
                path: "disk.vmdk".into(),
                size: Some(1024)
            }]
        );
        assert_eq!(
            spec.warnings,
            ["OvfUnknownEntity: unknown element [lineNumber=3]"]
        );
        // what is sent back parses with the server's prefixes
        let names: Vec<String> = config_children(&spec).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "name",
                "version",
                "guestId",
                "files",
                "numCPUs",
                "memoryMB",
                "deviceChange",
                "extraConfig",
                "vAppConfig"
            ]
        );
    }

    #[test]
    fn config_is_inserted_in_xsd_order_without_duplicates() {
        let spec = parse_import_spec(RESPONSE).unwrap();
        let spec = spec
            .with_config(
                Some("migrated <by> virtrigaud"),
                &[
                    ("existing", "new"),
                    ("added", "1"),
                    ("added2", "2"),
                    ("added", "3"),
                ],
                Some(Firmware::Efi),
            )
            .unwrap();
        let p = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            config_children(&spec),
            [
                p("name", ""),
                p("version", ""),
                p("guestId", ""),
                p("annotation", "migrated <by> virtrigaud"),
                p("files", ""),
                p("numCPUs", ""),
                p("memoryMB", ""),
                p("deviceChange", ""),
                p("extraConfig", "existing=new"),
                p("extraConfig", "added2=2"),
                p("extraConfig", "added=3"),
                p("vAppConfig", ""),
                p("firmware", "efi"),
            ]
        );
        // applying again replaces instead of adding
        let again = spec
            .with_config(Some("second"), &[("added", "4")], Some(Firmware::Bios))
            .unwrap();
        let children = config_children(&again);
        assert_eq!(
            children.iter().filter(|(n, _)| n == "annotation").count(),
            1
        );
        assert_eq!(children.iter().filter(|(n, _)| n == "firmware").count(), 1);
        assert_eq!(
            children.iter().filter(|(n, _)| n == "extraConfig").count(),
            3
        );
        assert!(children.contains(&("extraConfig".into(), "added=4".into())));
        assert!(children.contains(&("firmware".into(), "bios".into())));
    }

    #[test]
    fn extra_config_goes_before_later_elements_when_none_exists() {
        let text = RESPONSE.replace(
            "<extraConfig><key>existing</key><value _XMLSchema-instance:type=\"xsd:string\">old</value></extraConfig>",
            "",
        );
        let spec = parse_import_spec(&text).unwrap();
        let spec = spec.with_config(None, &[("k", "v")], None).unwrap();
        let names: Vec<String> = config_children(&spec).into_iter().map(|(n, _)| n).collect();
        let ec = names.iter().position(|n| n == "extraConfig").unwrap();
        assert_eq!(names[ec - 1], "deviceChange");
        assert_eq!(names[ec + 1], "vAppConfig");
    }

    #[test]
    fn server_errors_are_listed() {
        let text = RESPONSE.replace(
            "<returnval>",
            "<returnval><error><fault xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"OvfUnsupportedType\"><name>floppy</name></fault><localizedMessage>unsupported</localizedMessage></error>",
        );
        match parse_import_spec(&text) {
            Err(SpecError::Server(e)) => {
                assert_eq!(e, ["OvfUnsupportedType: unsupported [name=floppy]"])
            }
            other => panic!("{other:?}"),
        }
    }
}

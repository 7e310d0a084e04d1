//! The enumerations stored in SIF headers and descriptors.
//!
//! Every value read from an image is kept as its raw integer so that an image
//! written by a newer tool still lists; the `name` methods give the spelling
//! siftool prints, with "Unknown" for values this crate does not know.

use std::fmt;

macro_rules! raw_enum {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty) { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $text:expr,)* }
        unknown = $unknown:expr;
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        #[allow(non_upper_case_globals)]
        impl $name {
            $(
                $(#[$vmeta])*
                #[doc = concat!("\n\nsiftool calls it \"", $text, "\".")]
                pub const $variant: $name = $name($value);
            )*

            /// Every value this crate knows, in numeric order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant,)*];

            /// The name siftool prints for this value.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $(v if v == $value => $text,)*
                    _ => $unknown,
                }
            }

            /// Whether this value is one this crate knows.
            pub fn is_known(self) -> bool {
                Self::KNOWN.contains(&self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x} {})", stringify!($name), self.0, self.name())
            }
        }
    };
}

raw_enum! {
    /// The kind of a data object (descriptor offset 0).
    DataType(i32) {
        /// The definition file the image was built from.
        DEFFILE = 0x4001 => "Def.FILE",
        /// Environment variables.
        ENV_VAR = 0x4002 => "Env.Vars",
        /// JSON labels.
        LABELS = 0x4003 => "JSON.Labels",
        /// A filesystem partition.
        PARTITION = 0x4004 => "FS",
        /// A signature over an object group or object.
        SIGNATURE = 0x4005 => "Signature",
        /// Generic JSON metadata.
        GENERIC_JSON = 0x4006 => "JSON.Generic",
        /// Raw data.
        GENERIC = 0x4007 => "Generic/Raw",
        /// A cryptographic message (for example an encrypted key).
        CRYPTO_MESSAGE = 0x4008 => "Cryptographic Message",
        /// A software bill of materials.
        SBOM = 0x4009 => "SBOM",
        /// The root index of an OCI image stored in the SIF.
        OCI_ROOT_INDEX = 0x400A => "OCI.RootIndex",
        /// An OCI blob.
        OCI_BLOB = 0x400B => "OCI.Blob",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// The filesystem inside a partition object.
    FsType(i32) {
        SQUASHFS = 1 => "Squashfs",
        EXT3 = 2 => "Ext3",
        IMMUTABLE_OBJECT = 3 => "Archive",
        RAW = 4 => "Raw",
        ENCRYPTED_SQUASHFS = 5 => "Encrypted squashfs",
        /// Apptainer's unprivileged encryption (apptainer/sif only).
        GOCRYPTFS_SQUASHFS = 6 => "Gocryptfs squashfs",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// The role of a partition.
    PartType(i32) {
        SYSTEM = 1 => "System",
        /// The primary system partition: the container's root filesystem.
        PRIMARY_SYSTEM = 2 => "*System",
        DATA = 3 => "Data",
        OVERLAY = 4 => "Overlay",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// The hash recorded in a signature descriptor.
    HashType(i32) {
        SHA256 = 1 => "SHA-256",
        SHA384 = 2 => "SHA-384",
        SHA512 = 3 => "SHA-512",
        BLAKE2S_256 = 4 => "BLAKE2s-256",
        BLAKE2B_256 = 5 => "BLAKE2b-256",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// The encoding of a cryptographic message object.
    FormatType(i32) {
        OPENPGP = 1 => "OpenPGP",
        PEM = 2 => "PEM",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// What a cryptographic message object holds.
    MessageType(i32) {
        CLEAR_SIGNATURE = 0x100 => "Clear Signature",
        RSA_OAEP = 0x200 => "RSA-OAEP",
    }
    unknown = "Unknown";
}

raw_enum! {
    /// The format of an SBOM object.
    SbomFormat(i32) {
        CYCLONEDX_JSON = 1 => "cyclonedx-json",
        CYCLONEDX_XML = 2 => "cyclonedx-xml",
        GITHUB_JSON = 3 => "github-json",
        SPDX_JSON = 4 => "spdx-json",
        SPDX_RDF = 5 => "spdx-rdf",
        SPDX_TAG_VALUE = 6 => "spdx-tag-value",
        SPDX_YAML = 7 => "spdx-yaml",
        SYFT_JSON = 8 => "syft-json",
    }
    unknown = "unknown";
}

impl SbomFormat {
    /// Looks a format up by the name siftool uses on its command line.
    pub fn from_name(name: &str) -> Option<SbomFormat> {
        Self::KNOWN.iter().copied().find(|f| f.name() == name)
    }
}

/// A CPU architecture, stored as two ASCII digits and a NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch(pub [u8; 3]);

/// Architecture codes and their Go names, as SIF defines them.
const ARCHES: &[(&[u8; 3], &str)] = &[
    (b"01\0", "386"),
    (b"02\0", "amd64"),
    (b"03\0", "arm"),
    (b"04\0", "arm64"),
    (b"05\0", "ppc64"),
    (b"06\0", "ppc64le"),
    (b"07\0", "mips"),
    (b"08\0", "mipsle"),
    (b"09\0", "mips64"),
    (b"10\0", "mips64le"),
    (b"11\0", "s390x"),
    (b"12\0", "riscv64"),
    (b"13\0", "loong64"),
];

impl Arch {
    /// The code for "no architecture" (an image without a primary partition).
    pub const UNKNOWN: Arch = Arch(*b"00\0");

    /// The architecture named `go_name` ("amd64", "arm64", ...), if SIF knows it.
    pub fn from_go_name(go_name: &str) -> Option<Arch> {
        ARCHES
            .iter()
            .find(|(_, name)| *name == go_name)
            .map(|(code, _)| Arch(**code))
    }

    /// The architecture with siftool's numeric code `n` (1 = 386 … 13 = loong64).
    pub fn from_number(n: u32) -> Option<Arch> {
        ARCHES
            .get((n as usize).checked_sub(1)?)
            .map(|(code, _)| Arch(**code))
    }

    /// The architecture of the machine this program runs on.
    pub fn host() -> Arch {
        let go_name = match std::env::consts::ARCH {
            "x86" => "386",
            "x86_64" => "amd64",
            "arm" => "arm",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            "mips" => "mips",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips64" => "mips64",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "loongarch64" => "loong64",
            _ => return Arch::UNKNOWN,
        };
        Arch::from_go_name(go_name).unwrap_or(Arch::UNKNOWN)
    }

    /// The Go name of the architecture, or "unknown".
    pub fn go_name(self) -> &'static str {
        ARCHES
            .iter()
            .find(|(code, _)| **code == self.0)
            .map_or("unknown", |(_, name)| name)
    }

    /// Whether this is the "unknown" code or any code SIF does not define.
    pub fn is_unknown(self) -> bool {
        self.go_name() == "unknown"
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.go_name())
    }
}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Arch({:?} {})",
            String::from_utf8_lossy(&self.0),
            self.go_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_siftool() {
        assert_eq!(DataType::PARTITION.name(), "FS");
        assert_eq!(DataType(0x4FFF).name(), "Unknown");
        assert_eq!(HashType::SHA384.to_string(), "SHA-384");
        assert_eq!(SbomFormat(99).name(), "unknown");
        assert_eq!(PartType::PRIMARY_SYSTEM.name(), "*System");
        assert!(DataType::OCI_BLOB.is_known());
        assert!(!FsType(0).is_known());
    }

    #[test]
    fn arch_codes_round_trip() {
        for n in 1..=13 {
            let arch = Arch::from_number(n).unwrap();
            assert_eq!(Arch::from_go_name(arch.go_name()), Some(arch));
        }
        assert_eq!(Arch::from_number(0), None);
        assert_eq!(Arch::from_number(14), None);
        assert_eq!(Arch(*b"99\0").go_name(), "unknown");
        assert!(Arch::UNKNOWN.is_unknown());
        assert_eq!(Arch::from_go_name("amd64").unwrap().0, *b"02\0");
    }

    #[test]
    fn host_arch_is_known_here() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host().go_name(), "amd64");
        }
    }
}

//! The image config stored in a converted SIF (`oci-config.json`, as
//! Apptainer stores it) and what `sifrun run` takes from it.

use std::fs::File;
use std::path::{Path, PathBuf};

use oci::manifest::MAX_CONFIG_BYTES;
use sif::{DataType, Image};

use super::CONFIG_OBJECT;

/// The absolute `WORKDIR` of a config's bytes, if it names one.
pub fn workdir_of(config: &[u8]) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        config: Option<oci::manifest::ContainerConfig>,
    }
    let c: Partial = serde_json::from_slice(config).ok()?;
    let w = c.config?.working_dir?;
    let p = PathBuf::from(w.trim());
    p.is_absolute().then_some(p)
}

/// The bytes of `image`'s `oci-config.json` object, if it has one.
pub fn read_config(image: &Path) -> Option<Vec<u8>> {
    let file = File::open(image).ok()?;
    let img = Image::open(&file).ok()?;
    let d = img
        .descriptors_of_type(DataType::GENERIC_JSON)
        .find(|d| d.name() == CONFIG_OBJECT && d.size() <= MAX_CONFIG_BYTES)?;
    let mut buf = vec![0u8; usize::try_from(d.size()).ok()?];
    img.read_object_at(d, &mut buf, 0).ok()?;
    Some(buf)
}

/// The image's `WORKDIR`, for `sifrun run`.
pub fn image_workdir(image: &Path) -> Option<PathBuf> {
    read_config(image).and_then(|c| workdir_of(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir() {
        let c = br#"{"config":{"WorkingDir":"/work/dir","Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(workdir_of(c), Some(PathBuf::from("/work/dir")));
        assert_eq!(workdir_of(br#"{"config":{"WorkingDir":""}}"#), None);
        assert_eq!(workdir_of(br#"{"config":{"WorkingDir":"rel"}}"#), None);
        assert_eq!(workdir_of(br#"{"config":{}}"#), None);
        assert_eq!(workdir_of(b"not json"), None);
    }
}

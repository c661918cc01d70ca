//! `coordinator dataset`: pack ILSVRC folders into TFRecord shards, index shards made elsewhere,
//! and print an index.

use std::path::Path;

use incept_common::data::folders::ImagenetFolders;
use incept_common::data::pack::{self, PackOptions};
use incept_common::data::shards::{DatasetIndex, INDEX_FILE};

/// `dataset pack`: writes the shards and index, printing a line per shard.
pub fn pack(
    from: &Path,
    val_labels: Option<&Path>,
    out: &Path,
    options: &PackOptions,
) -> anyhow::Result<()> {
    let folders = ImagenetFolders::open(from, val_labels)?;
    eprintln!(
        "packing {} training and {} validation images of {} classes from {} into {}",
        folders.files(incept_common::data::Split::Train).len(),
        folders.files(incept_common::data::Split::Validation).len(),
        folders.synsets().len(),
        from.display(),
        out.display()
    );
    let index = pack::pack(&folders, out, options, |line| eprintln!("  {line}"))?;
    print!("{}", pack::describe(&index));
    println!("index: {}", out.join(INDEX_FILE).display());
    Ok(())
}

/// `dataset index`: verifies every record of the shards in `dir` and writes their index.
pub fn index(dir: &Path) -> anyhow::Result<()> {
    let index = DatasetIndex::build(dir, |line| eprintln!("  {line}"))?;
    index.write(dir)?;
    print!("{}", pack::describe(&index));
    println!("index: {}", dir.join(INDEX_FILE).display());
    Ok(())
}

/// `dataset inspect`: prints the index of `dir`.
pub fn inspect(dir: &Path) -> anyhow::Result<()> {
    print!("{}", pack::describe(&DatasetIndex::read(dir)?));
    Ok(())
}

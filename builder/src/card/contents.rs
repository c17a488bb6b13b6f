//! What goes onto a node's PIHA-CFG partition: `node.yaml`, the secrets its
//! role needs under `secrets/`, a README for whoever finds the card, and the
//! image's own `image.json` (kept from the image, never invented here).

use std::path::Path;

use crate::card::secrets::Secrets;
use crate::card::stamp::{FoundImage, Identity};
use crate::image::fat::FatFile;
use crate::image::info::{IMAGE_INFO_FILE, ImageInfo};
use crate::inputs::distro;
use anyhow::{Context, bail};
use piha_config::cluster::{ClusterFile, Role};
use piha_config::node::{CardFacts, NODE_FILE, NetworkRenderer, NodeConfig};
use piha_config::secrets;

/// For the human who mounts the card on a laptop.
pub const README_FILE: &str = "README.txt";
/// Size of a bare PIHA-CFG image, and of the partition in every board layout.
pub const PARTITION_SIZE: u64 = 16 << 20;

/// Everything for one node's card, ready to become a FAT filesystem.
#[derive(Debug, Clone)]
pub struct Card {
    pub node: NodeConfig,
    pub files: Vec<FatFile>,
}

impl Card {
    /// Paths under `secrets/`, for the summary line.
    pub fn secret_count(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.path.starts_with(&format!("{}/", secrets::CARD_DIR)))
            .count()
    }
}

/// Which network configuration a distro's userland uses, from its file in
/// `distros/` (`network_renderer:`), the same data the image was built from.
pub fn network_renderer(distro: &str) -> anyhow::Result<NetworkRenderer> {
    distro::network_renderer(distro).with_context(|| format!("finding the network renderer of distro {distro:?}"))
}

/// The node's `node.yaml` content, or an error naming every known node.
pub fn node_config(cluster: &ClusterFile, cluster_path: &Path, node: &str, distro: &str) -> anyhow::Result<NodeConfig> {
    if cluster.node(node).is_none() {
        let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "{}: there is no node named {node:?}; the nodes are: {}; nothing was written",
            cluster_path.display(),
            known.join(", ")
        );
    }
    NodeConfig::for_node(cluster, node, network_renderer(distro)?).with_context(|| {
        format!(
            "{}: cannot build node.yaml for {node} (is the cluster file valid?)",
            cluster_path.display()
        )
    })
}

/// The secrets a card gets: the files (`secrets/<rel>`) and the CA's notBefore.
#[derive(Debug, Default)]
pub struct CardSecrets {
    pub files: Vec<FatFile>,
    pub ca_not_before: Option<u64>,
}

/// The secret files `role` gets, as they go onto the card (`secrets/<rel>`).
/// Directors get none and need no secrets directory; for the others the
/// directory must belong to this cluster, and the token and discovery hash are
/// checked (a stale hash would make every join fail).
pub fn secret_files(role: Role, cluster: &ClusterFile, cluster_path: &Path, secrets_dir: &Path) -> anyhow::Result<CardSecrets> {
    let wanted = secrets::for_role(role);
    if wanted.is_empty() {
        return Ok(CardSecrets::default());
    }
    let store = Secrets::for_cluster(cluster_path, secrets_dir, cluster)?;
    store.token()?;
    store.ca_cert_hash()?;
    let ca_not_before = Some(store.ca_not_before()?);
    let mut out = Vec::new();
    for s in wanted {
        let contents = store.read(*s)?;
        // for_role decides; this is the backstop that keeps a key off a worker's
        // card even if a file in the secrets directory is not what its name says.
        if role != Role::ControlPlane && contains(&contents, b"PRIVATE KEY") {
            bail!(
                "{} holds a private key but goes to a {} node; check the secrets directory",
                store.path(*s).display(),
                role.as_str()
            );
        }
        out.push(FatFile::new(format!("{}/{}", secrets::CARD_DIR, s.rel), contents));
    }
    Ok(CardSecrets { files: out, ca_not_before })
}

/// Refuses to put a node on an image built for another board.
pub fn check_image(node: &NodeConfig, image: &ImageInfo, target: &Path) -> anyhow::Result<()> {
    match &image.board {
        Some(b) if *b != node.node.board => bail!(
            "{} holds an image for board {b:?}, but node {} is a {:?}; nothing was written. Build and flash the {} image (`piha build --board {}`) for this node",
            target.display(),
            node.node.name,
            node.node.board,
            node.node.board,
            node.node.board
        ),
        _ => Ok(()),
    }
}

/// Assembles the card for `node_name`: node.yaml rendered for the image's
/// distro (the cluster's when the image does not say), the role's secrets,
/// README.txt and the image's image.json.
pub fn assemble(id: Identity<'_>, image: Option<&FoundImage>, target: &Path) -> anyhow::Result<Card> {
    let distro = image.and_then(|i| i.info.distro.as_deref()).unwrap_or(&id.cluster.distro);
    let node = node_config(id.cluster, id.cluster_path, id.node, distro)?;
    if let Some(i) = image {
        check_image(&node, &i.info, target)?;
    }
    let mut node = node;
    let secrets = secret_files(node.node.role, id.cluster, id.cluster_path, id.secrets_dir)?;
    let under_dir = |f: &FatFile| {
        f.path
            .strip_prefix(&format!("{}/", secrets::CARD_DIR))
            .unwrap_or(&f.path)
            .to_string()
    };
    let named: Vec<(String, &[u8])> = secrets.files.iter().map(|f| (under_dir(f), f.contents.as_slice())).collect();
    let refs: Vec<(&str, &[u8])> = named.iter().map(|(rel, b)| (rel.as_str(), *b)).collect();
    node.card = CardFacts::new(now(), secrets.ca_not_before, &refs);
    let mut files = vec![
        FatFile::new(NODE_FILE, node.to_yaml().into_bytes()),
        FatFile::new(README_FILE, readme(&node).into_bytes()),
    ];
    files.extend(secrets.files);
    if let Some(i) = image {
        files.push(FatFile::new(IMAGE_INFO_FILE, i.raw.clone()));
    }
    Ok(Card { node, files })
}

fn readme(node: &NodeConfig) -> String {
    let mut lines = vec![
        format!(
            "PIHA-CFG: the identity of Kubernetes node {} ({}) of cluster {}.",
            node.node.name,
            node.node.role.as_str(),
            node.cluster.name
        ),
        String::new(),
        "piha-agent reads this partition on every boot.".to_string(),
        String::new(),
        "node.yaml    who this node is: name, address, role and the cluster facts.".to_string(),
        "             To give the card another identity, re-stamp it:".to_string(),
        "             piha stamp --cluster cluster.yaml --node NAME /dev/sdX".to_string(),
    ];
    match node.node.role {
        Role::ControlPlane => lines.extend([
            "secrets/     the cluster CAs, service-account keys and bootstrap token.".to_string(),
            "             Treat this card like a password; the agent deletes them once the node has joined.".to_string(),
        ]),
        Role::Worker => lines.extend([
            "secrets/     the bootstrap token and the CA certificate hash (no private keys).".to_string(),
            "             The agent deletes them once the node has joined.".to_string(),
        ]),
        Role::Director => {}
    }
    lines.extend([
        "image.json   which board and distro the flashed image is for (written by `piha build`).".to_string(),
        "status.json  written by the agent: how far it got, and any error.".to_string(),
        "             Read it with `piha status /dev/sdX`.".to_string(),
        String::new(),
    ]);
    // CRLF, so the file reads well in any editor on the laptop the card is put into.
    lines.join("\r\n")
}

/// The stamp time: now, in Unix seconds.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use piha_config::cluster::{ClusterFile, Role};
    use piha_config::node::NetworkRenderer;

    use super::{check_image, network_renderer, node_config, secret_files};
    use crate::image::info::ImageInfo;

    fn cluster() -> ClusterFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu-lab.yaml");
        ClusterFile::load(&p).unwrap()
    }

    #[test]
    fn unknown_node_lists_the_known_ones() {
        let err = node_config(&cluster(), Path::new("c.yaml"), "cp9", "debian-bookworm")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"cp9\"") && err.contains("lb1, lb2, cp1, cp2, cp3, w1"), "{err}");
    }

    #[test]
    fn renderer_follows_distro() {
        assert_eq!(network_renderer("ubuntu-noble").unwrap(), NetworkRenderer::Netplan);
        assert_eq!(network_renderer("debian-bookworm").unwrap(), NetworkRenderer::Networkd);
        assert!(network_renderer("plan9").is_err());
    }

    #[test]
    fn board_mismatch_names_both() {
        let n = node_config(&cluster(), Path::new("c.yaml"), "cp1", "debian-bookworm").unwrap();
        let img = ImageInfo::parse(br#"{"board": "rpi4", "distro": "ubuntu-noble", "version": "x"}"#).unwrap();
        let err = check_image(&n, &img, Path::new("card.img")).unwrap_err().to_string();
        assert!(err.contains("\"rpi4\"") && err.contains("\"amd64\""), "{err}");
        let ok = ImageInfo::parse(br#"{"board": "amd64"}"#).unwrap();
        check_image(&n, &ok, Path::new("card.img")).unwrap();
    }

    #[test]
    fn director_needs_no_secrets_but_others_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let c = cluster();
        assert!(
            secret_files(Role::Director, &c, Path::new("c.yaml"), &missing)
                .unwrap()
                .files
                .is_empty()
        );
        let err = secret_files(Role::Worker, &c, Path::new("c.yaml"), &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("piha init"), "{err}");
    }
}

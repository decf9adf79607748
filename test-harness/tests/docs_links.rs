//! The README and the book under `docs/`: every relative link points at a file that exists, and
//! every `#anchor` at a heading of its page, so a page moved or renamed breaks the build, not a
//! reader's click.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use test_harness::paths;

/// Every Markdown page: the README and `docs/**/*.md`.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let root = paths::workspace_root();
    let mut out = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut out);
    out.sort();
    out
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn anchors(page: &Path) -> Vec<String> {
    prose(&std::fs::read_to_string(page).unwrap())
        .lines()
        .filter_map(|l| l.strip_prefix('#').map(|h| h.trim_start_matches('#')))
        .map(paths::heading_anchor)
        .collect()
}

/// The `](target)` links of a page's prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_link_and_anchor_of_the_readme_and_the_book_resolves() {
    let pages = pages();
    assert!(pages.len() >= 20, "the book has its pages: {pages:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = prose(&std::fs::read_to_string(page).unwrap());
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
            } else if !anchor.is_empty()
                && target.extension().is_some_and(|x| x == "md")
                && !anchors(&target).contains(&anchor.to_string())
            {
                broken.push(format!("{}: {link} (no such heading)", page.display()));
            }
        }
    }
    assert!(checked >= 30, "links checked: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_the_front_page() {
    let size = std::fs::metadata(paths::workspace_root().join("README.md")).unwrap().len();
    assert!(size <= 15 * 1024, "README.md is {size} bytes: the rest belongs in the book under docs/");
}

/// The troubleshooting page has a section for every cause the diagnosis can name, under the
/// cause's own name (so `#<cause>` finds it), opening with the hint the header carries, word for
/// word: the page and the code cannot drift apart.
#[test]
fn troubleshooting_covers_every_cause() {
    use upstream_guard::diagnose::Cause;
    let page = paths::workspace_root().join("docs").join("operations").join("troubleshooting.md");
    let text = std::fs::read_to_string(&page).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut missing = Vec::new();
    for cause in Cause::ALL {
        let heading = format!("### {}", cause.token());
        let Some(at) = lines.iter().position(|l| *l == heading) else {
            missing.push(format!("{}: no `{heading}` section", cause.token()));
            continue;
        };
        let quote = lines[at + 1..].iter().find(|l| !l.trim().is_empty()).copied().unwrap_or_default();
        if quote != format!("> {}", cause.hint()) {
            missing.push(format!("{}: the section opens with {quote:?}, not the hint", cause.token()));
        }
    }
    let sections = lines.iter().filter(|l| l.starts_with("### ")).count();
    assert_eq!(sections, Cause::ALL.len(), "a section for a cause the code does not have");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

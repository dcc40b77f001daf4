//! In-process tests of the router's pure parts: the route table against the OpenAPI document,
//! query parsing, token comparison and the allow-list.

use super::*;

#[test]
fn every_route_of_the_router_is_in_the_openapi_document() {
    let doc = openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    let routes = routes();
    for (method, path, _) in &routes {
        let m = method.as_str().to_ascii_lowercase();
        assert!(paths.get(*path).and_then(|p| p.get(&m)).is_some(), "{method} {path} is not documented");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "the document describes routes the router does not have");
}

#[test]
fn query_strings_decode() {
    let q = query(Some("name=a%2Eb&lines=10&x=%E6%9C%BA+1&bad=%zz".into()));
    assert_eq!(q["name"], "a.b");
    assert_eq!(q["lines"], "10");
    assert_eq!(q["x"], "机 1");
    assert_eq!(q["bad"], "%zz");
    assert!(name_param(Some("name=..".into())).is_err());
    assert!(name_param(None).is_err());
}

#[test]
fn tokens_compare_exactly() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
}

#[test]
fn real_paths_resolve_symlinks_and_refuse_dotdot_in_missing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(base.join("allowed")).unwrap();
    std::os::unix::fs::symlink("/etc", base.join("allowed/link")).unwrap();
    assert_eq!(real_path(&base.join("allowed/new/x")).unwrap(), base.join("allowed/new/x"));
    assert_eq!(real_path(&base.join("allowed/link/passwd")).unwrap(), std::path::PathBuf::from("/etc/passwd"));
    assert_eq!(real_path(&base.join("allowed/../x")).unwrap(), base.join("x"));
    assert!(real_path(&base.join("allowed/missing/../../x")).is_err());
}

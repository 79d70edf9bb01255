use super::*;

fn view<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        path,
        query,
        headers,
    }
}

#[test]
fn path_prefix_is_element_wise() {
    let p = PathMatch::Prefix("/abc".into());
    for (path, ok) in [
        ("/abc", true),
        ("/abc/", true),
        ("/abc/def", true),
        ("/abcd", false),
        ("/ab", false),
    ] {
        assert_eq!(p.matches(path), ok, "{path}");
    }
    let root = PathMatch::Prefix(String::new());
    assert!(root.matches("/") && root.matches("/anything"));
    let exact = PathMatch::Exact("/one".into());
    assert!(exact.matches("/one") && !exact.matches("/one/") && !exact.matches("/One"));
    let re = PathMatch::Regex(full_match_regex("/v[0-9]+/.*").unwrap());
    assert!(re.matches("/v2/x") && !re.matches("/x/v2/x"));
}

#[test]
fn header_and_query_matching() {
    let mut h = HeaderMap::new();
    h.insert("version", HeaderValue::from_static("two"));
    h.append("color", HeaderValue::from_static("red"));
    let m = RequestMatcher {
        path: PathMatch::Prefix(String::new()),
        method: Some(Method::GET),
        headers: vec![(
            HeaderName::from_static("version"),
            ValueMatch::Exact("two".into()),
        )],
        query: vec![("animal".into(), ValueMatch::Exact("whale".into()))],
    };
    let get = Method::GET;
    assert!(m.matches(&view(&get, "/", Some("animal=whale&x=1"), &h)));
    assert!(!m.matches(&view(&get, "/", Some("animal=dolphin"), &h)));
    assert!(!m.matches(&view(&get, "/", None, &h)));
    assert!(!m.matches(&view(&Method::POST, "/", Some("animal=whale"), &h)));
    assert_eq!(
        first_query_value(Some("a=1&a=2&b=x%20y"), "a").as_deref(),
        Some("1")
    );
    assert_eq!(
        first_query_value(Some("a=1&a=2&b=x%20y"), "b").as_deref(),
        Some("x y")
    );
}

#[test]
fn host_index_orders_exact_then_longest_wildcard_then_any() {
    let mut idx: HostIndex<&str> = HostIndex::default();
    *idx.entry("", || "") = "any";
    *idx.entry("*.example.com", || "") = "wild";
    *idx.entry("*.foo.example.com", || "") = "wild-longer";
    *idx.entry("a.foo.example.com", || "") = "exact";
    let got: Vec<&str> = idx.lookup("a.foo.example.com").copied().collect();
    assert_eq!(got, vec!["exact", "wild-longer", "wild", "any"]);
    let got: Vec<&str> = idx.lookup("b.example.com").copied().collect();
    assert_eq!(got, vec!["wild", "any"]);
    let got: Vec<&str> = idx.lookup("example.com").copied().collect();
    assert_eq!(got, vec!["any"]);
}

/// ReplacePrefixMatch and ReplaceFullPath, as the Gateway API conformance cases exercise them.
#[test]
fn path_modifiers() {
    let cases: &[(PathModifier, Option<&str>, &str, &str)] = &[
        (
            PathModifier::Prefix("/one".into()),
            Some("/prefix/one"),
            "/prefix/one/two",
            "/one/two",
        ),
        (
            PathModifier::Prefix("/".into()),
            Some("/strip-prefix"),
            "/strip-prefix/three",
            "/three",
        ),
        (
            PathModifier::Prefix("/".into()),
            Some("/strip-prefix"),
            "/strip-prefix",
            "/",
        ),
        (
            PathModifier::Prefix("/new".into()),
            Some("/old/"),
            "/old/x",
            "/new/x",
        ),
        (
            PathModifier::Prefix("/new/".into()),
            Some("/old"),
            "/old",
            "/new/",
        ),
        (PathModifier::Prefix("".into()), Some("/old"), "/old", "/"),
        (
            PathModifier::Full("/one".into()),
            Some("/full"),
            "/full/two",
            "/one",
        ),
    ];
    for (m, prefix, path, want) in cases {
        assert_eq!(m.apply(path, *prefix), *want, "{m:?} {prefix:?} {path}");
    }
}

#[test]
fn weighted_choice_follows_weights() {
    let e = |w| BackendEntry {
        weight: w,
        target: BackendTarget::Invalid(String::new()),
        filters: Filters::default(),
    };
    let b = Backends::new(vec![e(0), e(1), e(3)]);
    assert_eq!(b.total_weight, 4);
    // Four draws spread over u64 land in the four units of weight.
    let quarter = u64::MAX / 4 + 1;
    let picks: Vec<usize> = (0..4)
        .map(|i| b.choose_where(i * quarter, |_| true).unwrap())
        .collect();
    assert_eq!(picks, vec![1, 2, 2, 2], "a zero weight is never chosen");
    assert_eq!(b.choose_where(u64::MAX, |_| true), Some(2));
    assert!(
        Backends::new(vec![e(0)])
            .choose_where(0, |_| true)
            .is_none()
    );
    // Only the eligible entries share the draws.
    assert_eq!(b.weight_where(|x| x.weight != 3), 1);
    assert_eq!(b.choose_where(u64::MAX, |x| x.weight != 3), Some(1));
}

#[test]
fn uniform_below_covers_the_range() {
    assert_eq!(uniform_below(0, 7), 0);
    assert_eq!(uniform_below(u64::MAX, 7), 6);
    assert_eq!(uniform_below(u64::MAX / 2, 2), 0);
    assert_eq!(uniform_below(u64::MAX / 2 + 1, 2), 1);
}

#[test]
fn precedence_orders_exact_prefix_method_headers_query_age_name() {
    let p = |class: Vec<i64>, created_ms, route: &str| Precedence {
        class,
        created_ms,
        route: route.into(),
        rule: 0,
        index: 0,
    };
    let mut v = [
        p(vec![1, -1, 1, 0, 0], 0, "a/prefix-short"),
        p(vec![0, -4, 1, 0, 0], 0, "a/exact"),
        p(vec![1, -6, 1, 0, 0], 0, "a/prefix-long"),
        p(vec![1, -6, 0, 0, 0], 0, "a/prefix-long-method"),
        p(vec![1, -6, 0, -2, 0], 5, "a/newer-two-headers"),
        p(vec![1, -6, 0, -2, 0], 1, "b/older-two-headers"),
        p(vec![1, -6, 0, -2, 0], 1, "a/older-two-headers"),
    ];
    v.sort();
    let names: Vec<&str> = v.iter().map(|x| x.route.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "a/exact",
            "a/older-two-headers",
            "b/older-two-headers",
            "a/newer-two-headers",
            "a/prefix-long-method",
            "a/prefix-long",
            "a/prefix-short"
        ]
    );
}

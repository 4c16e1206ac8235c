"""Same-terms resends: harmless on the same terms, refused (naming what differs) on others."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import Refused
from domain.resends import check_same_terms, differences

terms = st.dictionaries(st.sampled_from(["stake", "currency", "title", "cap"]),
                        st.one_of(st.integers(), st.text(max_size=5), st.none()), min_size=1)


@given(terms)
def test_the_same_terms_are_harmless(t):
    check_same_terms("x", dict(t), dict(t))
    assert differences(t, t) == {}


@given(terms, st.data())
def test_other_terms_are_refused_naming_each_difference(t, data):
    field = data.draw(st.sampled_from(sorted(t)))
    other = {**t, field: ("changed", t[field])}
    with pytest.raises(Refused, match=f"other terms: .*{field} is "):
        check_same_terms("challenge c1", t, other)
    assert set(differences(t, other)) == {field}

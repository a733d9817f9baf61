"""Port tokens (``tokens.py``): fresh, hashed, compared in constant time."""

from jhproxy_routes.tokens import hash_token, new_token, token_matches


def test_tokens():
    token = new_token()
    assert len(token) >= 43 and new_token() != token
    digest = hash_token(token)
    assert token_matches(token, digest)
    assert not token_matches(token[:-1], digest)
    assert not token_matches("", digest)
    assert not token_matches("é\udcff", digest)  # odd input is compared, not crashed on

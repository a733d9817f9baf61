"""A Streamlit app behind a port of jhproxy-routes.

Streamlit talks to its server over a websocket (``<base>/_stcore/stream``), which the
sidecar and the proxy pass through. On a path route give it the route's path with
``--server.baseUrlPath``; on a subdomain route nothing. ``--server.headless true`` and
``--browser.gatherUsageStats false``: no browser opened on the server, nothing sent out. The
commands: ``commands.py``.
"""

import streamlit as st

st.title("jhproxy-routes Streamlit example")
if "count" not in st.session_state:
    st.session_state.count = 0
if st.button("Add one"):
    st.session_state.count += 1  # runs on the server: the click went over the websocket
st.write(f"count: {st.session_state.count}")

"""Run meshserve on one machine (`stack`) and call it by hand (`cli`)."""

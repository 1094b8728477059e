"""rar-agent: retrieve-and-rank visual recognition as a LangChain-native tool."""

__version__ = "0.1.0"

{# Included in the scripts of the port page and the home page: a port's "listening" state,
   as the server's in-server part reported it (``listening`` of the settings object), in words. #}
      // null: not known (jhproxy-routes not installed in the server, or the server just started)
      function listeningText(port) {
        if (port.listening === null || port.listening === undefined) return "";
        if (!port.listening.length) return "nothing listening";
        const many = port.listening.length > 1 || String(port.port).includes("-");
        return "listening: " + port.listening.map((entry) => {
          const where = entry.reachable === false ? " (on 127.0.0.1 only: not reachable)" : "";
          return (many ? entry.port + " " : "") + (entry.process || "an app") + where;
        }).join(", ");
      }

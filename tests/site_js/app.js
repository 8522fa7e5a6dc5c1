// Builds every page of the fixture site in the browser: the HTML files are empty shells.
(function () {
  var pages = {
    "/": {title: "JS Home", text: "Welcome to the rendered orchard.", links: ["/page1.html", "/members/page2.html"]},
    "/page1.html": {title: "Page one", text: "The quince trees are pruned under a waxing moon.", links: ["/"]},
    "/members/page2.html": {title: "Members page", text: "Members harvest the medlar fruit after the first frost.", links: ["/page1.html"]}
  };
  var page = pages[location.pathname] || {title: "Missing", text: "No such page.", links: []};
  document.title = page.title;
  var html = "<h1>" + page.title + "</h1><p>" + page.text + "</p><ul>";
  page.links.forEach(function (href) { html += '<li><a href="' + href + '">' + href + "</a></li>"; });
  document.getElementById("app").innerHTML = html + "</ul>";
})();
